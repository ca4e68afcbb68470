#!/bin/sh
# The example app's test: it runs in its own branch, so it may write what it likes.
set -eu
q() { psql "$DATABASE_URL" -X -A -t -v ON_ERROR_STOP=1 -c "$1"; }
echo "testing in $(q 'select current_database()')"
q "insert into users (email) values ('carol@example.com')" >/dev/null
[ "$(q 'select count(*) from users')" = 3 ] || { echo "expected 3 users"; exit 1; }
echo "ok"
