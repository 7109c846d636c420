#!/bin/sh
# Run once by the postgres image when its volume is created (deploy/compose.yaml): the hub's runtime role
# `hub_app`, with its password from the secret db_app_password. The hub's migrations (run as hub_admin) then grant
# it what it needs: DML, and only SELECT/INSERT on the audit tables.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v pw="$(cat /run/secrets/db_app_password)" <<'SQL'
CREATE ROLE hub_app LOGIN PASSWORD :'pw';
SQL
