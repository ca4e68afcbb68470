"""psycopg 3 as a differential driver (see psycopg.ts, which starts it).

Reads one request a line on stdin, as JSON ({"op": "connect" | "run" | "disconnect", "client": ...}),
and answers each with one line of JSON on stdout: what the step gave, values made JSON-safe the
same way every time. Connections are in autocommit mode, so that BEGIN and COMMIT are the
scenario's own SQL. A simple query is execute() without parameters (psycopg then sends a Simple
Query); the extended protocol is execute() with parameters, or in binary, which psycopg sends with
the extended protocol even without parameters; a named statement is prepare=True (psycopg names it
_pg3_N, and deallocates it itself past prepared_max, or all of them after a DROP or a ROLLBACK).
"""

import datetime
import decimal
import json
import math
import re
import select
import signal
import sys
import time

import psycopg

NOTIFICATION_WAIT_S = 5.0
STEP_TIMEOUT_S = int(sys.argv[1]) if len(sys.argv) > 1 else 15


class StepTimeout(Exception):
    pass


class Client:
    def __init__(self, conn):
        self.conn = conn
        self.notices = []
        self.notifications = []


clients = {}


def safe(value):
    """A value as JSON holds it, the same way every time."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2**53 else f"{value}n"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): safe(v) for k, v in value.items()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return str(value)
    return f"{type(value).__name__}:{value}"


def error_outcome(error):
    if isinstance(error, StepTimeout):
        return {"error": "timeout", "message": "the step did not end in time"}
    sqlstate = getattr(error, "sqlstate", None)
    return {
        "error": sqlstate or f"client:{type(error).__name__}",
        "message": str(error),
    }


def results(cur):
    """Every result of the last execute(): several for a simple query of several statements."""
    out = []
    while True:
        result = {"command": cur.statusmessage, "rowCount": cur.rowcount}
        if cur.description is not None:
            result["fields"] = [[d.name, d.type_code] for d in cur.description]
            result["rows"] = [[safe(v) for v in row] for row in cur.fetchall()]
        out.append(result)
        if not cur.nextset():
            return out


def converted(sql, params):
    """$n placeholders as psycopg's %(pn)s, and params as a dict: $1 may appear twice."""
    if params is None:
        return sql, None
    text = re.sub(r"\$(\d+)", lambda m: f"%(p{m.group(1)})s", sql.replace("%", "%%"))
    return text, {f"p{i + 1}": v for i, v in enumerate(params)}


def query(conn, action):
    params = action.get("params")
    name = action.get("name")
    extended = action.get("protocol") == "extended" or params is not None or name is not None
    sql, values = converted(action["sql"], params)
    cur = conn.cursor()
    binary = True if extended and values is None and name is None else None
    cur.execute(sql, values, prepare=name is not None, binary=binary)
    return {"results": results(cur)}


def pipeline(conn, action):
    cursors = []
    with conn.pipeline():
        for q in action["queries"]:
            sql, values = converted(q["sql"], q.get("params"))
            cur = conn.cursor()
            cur.execute(sql, values, prepare=False)
            cursors.append(cur)
    return {"pipeline": [{"results": results(cur)} for cur in cursors]}


def copy_in(conn, action):
    cur = conn.cursor()
    with cur.copy(action["sql"]) as copy:
        copy.write(action["data"])
    return {"results": [{"command": cur.statusmessage, "rowCount": cur.rowcount}]}


def copy_out(conn, action):
    data = bytearray()
    with conn.cursor().copy(action["sql"]) as copy:
        for chunk in copy:
            data += chunk
    return {"copied": data.decode()}


def cursor(conn, action):
    rows = []
    with conn.cursor(name="differential") as cur:
        cur.itersize = action["batch"]
        cur.execute(action["sql"])
        fields = [[d.name, d.type_code] for d in cur.description]
        while True:
            batch = cur.fetchmany(action["batch"])
            if not batch:
                break
            rows.extend([safe(v) for v in row] for row in batch)
    return {"results": [{"command": None, "rowCount": len(rows), "fields": fields, "rows": rows}]}


def notification(client, channel):
    """The next notification on channel: waits on the socket, with no query sent meanwhile."""
    deadline = time.monotonic() + NOTIFICATION_WAIT_S
    pgconn = client.conn.pgconn
    while True:
        for i, n in enumerate(client.notifications):
            if n["channel"] == channel:
                return {"notification": client.notifications.pop(i)}
        left = deadline - time.monotonic()
        if left <= 0:
            return {
                "error": "client:no-notification",
                "message": f"nothing on {channel} within {NOTIFICATION_WAIT_S} s",
            }
        readable, _, _ = select.select([pgconn.socket], [], [], left)
        if readable:
            pgconn.consume_input()
            while True:
                n = pgconn.notifies()
                if n is None:
                    break
                client.notifications.append(
                    {"channel": n.relname.decode(), "payload": n.extra.decode()}
                )


def ident(name):
    return '"' + name.replace('"', '""') + '"'


def run(client, action):
    conn = client.conn
    kind = action["do"]
    if kind == "query":
        return query(conn, action)
    if kind == "pipeline":
        return pipeline(conn, action)
    if kind == "copy-in":
        return copy_in(conn, action)
    if kind == "copy-out":
        return copy_out(conn, action)
    if kind == "cursor":
        return cursor(conn, action)
    if kind == "listen":
        conn.execute(f"listen {ident(action['channel'])}")
        return {}
    if kind == "unlisten":
        conn.execute(f"unlisten {ident(action['channel'])}")
        return {}
    if kind == "notification":
        return notification(client, action["channel"])
    raise ValueError(f"unknown action {kind}")


def connect(name, request):
    info = request["connection"]
    conn = psycopg.connect(
        host=info["host"],
        port=info["port"],
        user=info["user"],
        password=info["password"],
        dbname=info["database"],
        autocommit=True,
        connect_timeout=10,
    )
    client = Client(conn)
    conn.add_notice_handler(lambda d: client.notices.append(d.sqlstate or "?"))
    conn.add_notify_handler(
        lambda n: client.notifications.append({"channel": n.channel, "payload": n.payload})
    )
    if request.get("preparedMax") is not None:
        conn.prepared_max = request["preparedMax"]
    clients[name] = client
    return client


def handle(request):
    op = request["op"]
    name = request["client"]
    if op == "connect":
        client = connect(name, request)
        return {}, client
    client = clients.get(name)
    if client is None:
        return {"error": "client:not-connected", "message": f"{name} is not connected"}, None
    client.notices = []
    if op == "run":
        return run(client, request["action"]), client
    if op == "disconnect":
        del clients[name]
        client.conn.close()
        return {}, client
    raise ValueError(f"unknown op {op}")


def on_alarm(_signum, _frame):
    raise StepTimeout()


def main():
    signal.signal(signal.SIGALRM, on_alarm)
    for line in sys.stdin:
        request = json.loads(line)
        client = clients.get(request["client"])
        signal.alarm(STEP_TIMEOUT_S)
        try:
            outcome, client = handle(request)
        except Exception as error:  # every failure is the step's outcome
            outcome = error_outcome(error)
            if isinstance(error, StepTimeout):
                # Whatever it was doing, the connection can't be trusted any more.
                gone = clients.pop(request["client"], None)
                if gone is not None:
                    gone.conn.pgconn.finish()
        finally:
            signal.alarm(0)
        if client is not None and client.notices:
            outcome["notices"] = client.notices
        sys.stdout.write(json.dumps(outcome) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
