"""How the admin and the dashboard write dates and times: one format, to the
second, with the time zone (TIME_ZONE), e.g. "2025-01-31 09:00:05 UTC".

Django's own English formats ("Jan. 31, 2025, 9 a.m.") would win over the
DATETIME_FORMAT setting, since localisation is always on; FORMAT_MODULE_PATH
names this module instead. Input formats are Django's (ISO 8601 included).
"""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = DATETIME_FORMAT
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = DATE_FORMAT
TIME_FORMAT = "H:i:s"
