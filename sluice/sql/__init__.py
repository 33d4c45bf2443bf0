"""SQL that sluice runs: numbered migrations (`migrations/NNN_name.sql`) and their runner.

The runner lives in `sluice.sql.migrate`; it is not imported here so that importing
`sluice.sql` stays free of side effects.
"""
