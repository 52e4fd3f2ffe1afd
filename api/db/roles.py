"""The application's PostgreSQL role: what the API and the workers connect as.

``pretextlab db upgrade`` runs as the database owner (in compose, the superuser the postgres image
creates) and, given ``PRETEXTLAB_DB_APP_PASSWORD``, makes role ``pretextlab_app``: LOGIN with that
password, no superuser, no CREATEDB/CREATEROLE, and only SELECT/INSERT/UPDATE/DELETE on the tables
and USAGE on the sequences of schema ``public``. It cannot create objects, read server files or
run programs (``COPY ... TO PROGRAM`` needs a superuser or pg_execute_server_program). Run after
every upgrade, so tables added by later migrations get the same grants.
"""

from __future__ import annotations

from sqlalchemy.engine import make_url

from api.db.session import is_sqlite, make_engine

APP_ROLE = "pretextlab_app"


def ensure_app_role(url: str, password: str, role: str = APP_ROLE) -> bool:
    """Create or update ``role`` with ``password`` and the application's grants; False on SQLite
    (nothing to do: a file has no roles)."""
    if is_sqlite(url):
        return False
    from psycopg import sql

    if not password or len(password) < 16:
        raise ValueError("PRETEXTLAB_DB_APP_PASSWORD: at least 16 characters")
    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        raw = engine.raw_connection()
        try:
            conn = raw.driver_connection
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                ident = sql.Identifier(role)
                cur.execute(sql.SQL("{} ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                                    "PASSWORD {}").format(sql.SQL(verb), ident, sql.Literal(password)))
                db = sql.Identifier(make_url(url).database or "postgres")
                for stmt in (
                    "GRANT CONNECT ON DATABASE {db} TO {r}",
                    "GRANT USAGE ON SCHEMA public TO {r}",
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {r}",
                    "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {r}",
                    # PostgreSQL < 15 lets every role create objects in public: not ours.
                    "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
                ):
                    cur.execute(sql.SQL(stmt).format(db=db, r=ident))
            conn.commit()
        finally:
            raw.close()
    finally:
        engine.dispose()
    return True
