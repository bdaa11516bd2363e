# One command to run the service locally, one to test it. See README.md.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
# Where the local settings are written; manage.py reads the same file (ENV_FILE).
ENV_FILE ?= .env
export ENV_FILE
# Where `make run` serves: WEB_PORT and PROVIDER_PORT, 8000 and 8081 unless given, e.g.
# `make run WEB_PORT=8001 PROVIDER_PORT=8082`. Given ports are stored in $(ENV_FILE), so later
# runs and manage.py use them too (devtools/local_env.py); no default here, or it would win.
# A value from $(ENV_FILE), in a recipe: $(call env_value,NAME).
env_value = $$(sed -n 's/^$(1)=//p' $(ENV_FILE))
# pytest-xdist processes for `make test`: most of the slow tests wait on processes they started,
# so more workers than cores pays (tests/settings.py gives each its own database and Redis db).
# On this project's 2-core machine, quiet: 4 workers 9 min 40 s, 5 8 min 57 s, 6 7 min 54 s.
TEST_WORKERS ?= 6

.PHONY: run test chromium-check browser-deps lint format check ci clean

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

# A local .env with fresh secrets, written once. manage.py loads it for every process.
$(ENV_FILE):
	@$(PYTHON) -m devtools.local_env create $@

## run: install, migrate and start web + qcluster + fake provider on SQLite (Ctrl-C stops all, exit status 0)
# The ports are settled (given ones stored in $(ENV_FILE)) and checked free before anything starts.
run: $(BIN)/.installed $(ENV_FILE)
	@$(BIN)/python -m devtools.local_env ports $(ENV_FILE)
	$(BIN)/python manage.py migrate --no-input
	@$(BIN)/python manage.py ensure_superuser --username admin > .local-admin-token.txt
	@echo
	@echo "  Admin:     http://127.0.0.1:$(call env_value,WEB_PORT)/admin/  (user admin, password: $(call env_value,DJANGO_SUPERUSER_PASSWORD))"
	@echo "  API docs:  http://127.0.0.1:$(call env_value,WEB_PORT)/api/docs/"
	@echo "  API token: $$(sed -n 's/^API token for .*: //p' .local-admin-token.txt)  (Authorization: Token <key>)"
	@echo "  Provider:  http://127.0.0.1:$(call env_value,PROVIDER_PORT)/  (what it received, live; it sends delivery receipts back)"
	@echo
	@rm -f .local-admin-token.txt
	WEB_PORT=$(call env_value,WEB_PORT) PROVIDER_PORT=$(call env_value,PROVIDER_PORT) $(BIN)/python -m devtools.run_local Procfile.dev

## test: lint, import contracts, Django checks, schema validation and the test suite (needs PostgreSQL and Redis on localhost, and Chromium)
# The tests set their own environment: ENV_FILE= keeps a local .env out of them.
# chromium-check first: without the browser, the browser tests would fail only at the end of the run.
test: export ENV_FILE =
test: chromium-check $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	DJANGO_SETTINGS_MODULE=tests.settings $(BIN)/python manage.py check --fail-level WARNING
	DJANGO_SETTINGS_MODULE=tests.settings $(BIN)/python manage.py spectacular --validate --fail-on-warn --file /dev/null
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The Chromium the browser tests drive (tests/browser/conftest.py): CHROMIUM_PATH, else Debian's.
chromium-check:
	@chromium="$${CHROMIUM_PATH:-/usr/bin/chromium}"; \
	if [ ! -x "$$chromium" ]; then \
		echo "make test: Chromium not found at $$chromium; the browser tests need it. Run 'make browser-deps' (or set CHROMIUM_PATH to a Chromium binary), then 'make test'." >&2; \
		exit 1; \
	fi

## browser-deps: install Debian's chromium for the browser tests (apt-get, as root or with sudo)
browser-deps:
	@if [ -x /usr/bin/chromium ]; then \
		echo "Chromium is installed: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	else \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
		|| { $$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }; \
	fi

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ci:
	bash .ci/run

clean:
	rm -rf $(VENV) .local staticfiles .pytest_cache .ruff_cache
