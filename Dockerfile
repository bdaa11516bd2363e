FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .
# collectstatic only needs the settings to import: a throwaway key, made here and
# gone with this one command, and DEBUG for the production-only checks (the run-time
# environment supplies the real SECRET_KEY and WEBHOOK_URL).
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" DEBUG=true \
        python manage.py collectstatic --no-input \
    && useradd --create-home --uid 10001 app \
    && mkdir -p /app/.local && chown -R app /app/.local

USER app
EXPOSE 8000
# gevent workers, so that slow clients cannot hold them, and no control socket
# (WEB_CONTROL_SOCKET to have one); gunicorn.conf.py says why.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "messaging_site.wsgi:application"]
