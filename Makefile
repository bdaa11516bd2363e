# One command to run the service locally, one to test it. See README.md.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
# Where the local settings are written; manage.py reads the same file (ENV_FILE).
ENV_FILE ?= .env
export ENV_FILE
# Where `make run` serves (Procfile.dev reads them), e.g. `make run WEB_PORT=8001`.
WEB_PORT ?= 8000
PROVIDER_PORT ?= 8081
export WEB_PORT PROVIDER_PORT
# pytest-xdist processes for `make test`: most of the slow tests wait on processes they started,
# so more workers than cores pays (tests/settings.py gives each its own database and Redis db).
TEST_WORKERS ?= 4

.PHONY: run test browser-deps lint format check ci clean

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

# A local .env with fresh secrets, written once. manage.py loads it for every process.
$(ENV_FILE):
	@printf '%s\n' \
		"# Written by 'make run' for local use only; never commit it." \
		"DEBUG=true" \
		"SECRET_KEY=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))')" \
		"DJANGO_SUPERUSER_PASSWORD=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(12))')" \
		"WEBHOOK_URL=http://127.0.0.1:$(PROVIDER_PORT)/" \
		"DISPATCH_BATCH_SIZE=2" \
		"DISPATCH_INTERVAL_SECONDS=10" \
		"QCLUSTER_WORKERS=2" \
		"RECEIPT_WEBHOOK_SECRET=whsec_$$($(PYTHON) -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())')" > $@
	@echo "Wrote $@ with fresh local secrets."

## run: install, migrate and start web + qcluster + fake provider on SQLite (Ctrl-C stops all, exit status 0)
run: $(BIN)/.installed $(ENV_FILE)
	$(BIN)/python manage.py migrate --no-input
	@$(BIN)/python manage.py ensure_superuser --username admin > .local-admin-token.txt
	@echo
	@echo "  Admin:     http://127.0.0.1:$(WEB_PORT)/admin/  (user admin, password: $$(grep ^DJANGO_SUPERUSER_PASSWORD= $(ENV_FILE) | cut -d= -f2-))"
	@echo "  API docs:  http://127.0.0.1:$(WEB_PORT)/api/docs/"
	@echo "  API token: $$(sed -n 's/^API token for .*: //p' .local-admin-token.txt)  (Authorization: Token <key>)"
	@echo "  Provider:  http://127.0.0.1:$(PROVIDER_PORT)/  (what it received, live; it sends delivery receipts back)"
	@echo
	@rm -f .local-admin-token.txt
	$(BIN)/python -m devtools.run_local Procfile.dev

## test: lint, import contracts, Django checks, schema validation and the test suite (needs PostgreSQL and Redis on localhost)
# The tests set their own environment: ENV_FILE= keeps a local .env out of them.
test: export ENV_FILE =
test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	DJANGO_SETTINGS_MODULE=tests.settings $(BIN)/python manage.py check --fail-level WARNING
	DJANGO_SETTINGS_MODULE=tests.settings $(BIN)/python manage.py spectacular --validate --fail-on-warn --file /dev/null
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup

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
