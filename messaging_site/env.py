"""Typed readers for environment variables.

Every setting that comes from the environment goes through one of these, so a
malformed value stops start-up with an error that names the variable instead
of surfacing later as a confusing failure deep inside a worker.
"""

from __future__ import annotations

import math
import os
import sys
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from restapi.redaction import url_redacted

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return value.strip()


def env_str(name: str, default: str | None = None) -> str | None:
    value = _raw(name)
    return default if value is None or value == "" else value


def env_secret(name: str) -> str | None:
    """NAME, or the content of the file whose path is in NAME_FILE.

    The file form is how Docker and Kubernetes secrets are mounted, and it keeps
    the secret out of `docker inspect` and the process environment. Surrounding
    whitespace (the trailing newline of `echo key > file`) is stripped. Errors
    name the variable and the path, never the secret.
    """
    file_name = f"{name}_FILE"
    value = env_str(name)
    path = env_str(file_name)
    if path is None:
        return value
    if value is not None:
        raise ImproperlyConfigured(f"{name} and {file_name} are both set; set only one of them")
    try:
        content = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ImproperlyConfigured(f"{file_name} names {path!r}, which cannot be read: {reason}") from None
    if not content:
        # An empty secret file is a mount gone wrong, not a request for the default.
        raise ImproperlyConfigured(f"{file_name} names {path!r}, which is empty")
    return content


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = _raw(name)
    if value is None or value == "":
        result = default
    else:
        try:
            result = int(value)
        except ValueError:
            raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and result < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {result}")
    if maximum is not None and result > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, got {result}")
    return result


def env_float(name: str, default: float, *, minimum: float | None = None, maximum: float | None = None) -> float:
    value = _raw(name)
    if value is None or value == "":
        result = default
    else:
        try:
            result = float(value)
        except ValueError:
            raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None
        # float() reads "inf" and "nan" too, which no range check below stops (NaN compares false).
        if not math.isfinite(result):
            raise ImproperlyConfigured(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and result < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {result}")
    if maximum is not None and result > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, got {result}")
    return result


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None or value == "":
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_networks(name: str) -> list[IPv4Network | IPv6Network]:
    """Comma-separated networks in CIDR notation (an address alone is a network of one).

    A network with host bits set (10.0.0.1/8) is refused rather than widened, and so
    is one holding every address (0.0.0.0/0, ::/0): either is more likely a mistake
    than a wish to trust the whole internet.
    """
    networks = []
    for item in env_list(name, []):
        try:
            network = ip_network(item)
        except ValueError:
            try:
                hint = f"; did you mean {ip_network(item, strict=False)}?"
            except ValueError:
                hint = ""
            raise ImproperlyConfigured(
                f"{name} must be a comma-separated list of networks like 10.0.0.0/8 or 192.0.2.7, got {item!r}{hint}"
            ) from None
        if network.prefixlen == 0:
            raise ImproperlyConfigured(f"{name} must not hold every address, got {item!r}")
        networks.append(network)
    return networks


def env_retry_schedule(name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """Comma-separated seconds before each try, the first 0 (at once), each at most a day."""
    items = env_list(name, [])
    if not items:
        return tuple(default)
    try:
        values = tuple(float(item) for item in items)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} must be comma-separated seconds like 0,5,300, got {','.join(items)!r}"
        ) from None
    if values[0] != 0 or any(not 0 <= v <= 86_400 for v in values):
        raise ImproperlyConfigured(
            f"{name} must start with 0 and hold seconds from 0 to 86400, got {','.join(items)!r}"
        )
    return values


def env_choice(name: str, default: str, *, choices: tuple[str, ...]) -> str:
    value = env_str(name, default)
    if value.lower() not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value.lower()


def env_url(name: str, default: str | None = None, *, schemes: tuple[str, ...]) -> str | None:
    value = env_str(name, default)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ImproperlyConfigured(
            f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)}, "
            f"got {url_redacted(value)!r}"  # its password, or a key in its query, is not for the log
        )
    return value


# The periods REST framework understands; it reads only the first letter, so
# "10/mango" would silently mean ten a minute. We accept the words, not the typo.
_RATE_PERIODS = {
    "s": "s",
    "sec": "s",
    "second": "s",
    "m": "min",
    "min": "min",
    "minute": "min",
    "h": "hour",
    "hour": "hour",
    "d": "day",
    "day": "day",
}


def env_rate(name: str, default: str) -> str:
    """A request rate such as "60/min" (periods: s, min, hour, day), normalised for REST framework."""
    value = env_str(name, default)
    number, slash, period = value.partition("/")
    number, period = number.strip(), period.strip().lower()
    canonical = _RATE_PERIODS.get(period[:-1] if period.endswith("s") and period[:-1] in _RATE_PERIODS else period)
    if not slash or not number.isascii() or not number.isdigit() or int(number) < 1 or canonical is None:
        raise ImproperlyConfigured(
            f"{name} must be a rate like 60/min: a whole number of at least 1, a slash, "
            f"and s, min, hour or day; got {value!r}"
        )
    return f"{int(number)}/{canonical}"


def default_qcluster_workers() -> int:
    """QCLUSTER_WORKERS when unset: one per core this process may run on (its CPU
    affinity, which a container's cpuset sets), as django-q2 defaults to, and at least
    two, since one of a cluster's workers paces."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(2, cores)


# Exit status of a process whose settings start-up refused (manage.py, gunicorn.conf.py):
# not 1, which a command that ran and failed returns.
CONFIGURATION_ERROR_EXIT_STATUS = 2


def configuration_error_line(error: ImproperlyConfigured, *, env_file: str | None = None) -> str:
    """A setting start-up refused, as one line for whoever started it: what is wrong
    (the error names the variable and what it must be) and where to change it. The
    traceback (40-odd lines of import machinery, the useful line last) says no more."""
    where = f"the environment or {env_file}" if env_file else "the environment"
    return f"Configuration error: {' '.join(str(error).split())} (set it in {where}; README, Configuration)"


def settings_check() -> None:
    """Read the settings (DJANGO_SETTINGS_MODULE, messaging_site.settings by default);
    if start-up refuses one, say so in one line and exit with status 2."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messaging_site.settings")
    from django.conf import settings

    try:
        settings.INSTALLED_APPS  # noqa: B018 (reading a setting imports the settings module)
    except ImproperlyConfigured as error:
        sys.stderr.write(configuration_error_line(error) + "\n")
        sys.exit(CONFIGURATION_ERROR_EXIT_STATUS)
