"""The job store: the tables, the engine and sessions, and every SQL statement on them.

Nothing outside this package writes SQL against the models (migrations aside). The API's routes
and the workers call the functions here; they never commit, except the few that open their own
transaction on a session factory (``leases.claim`` and the fenced writes of ``leases.JobLease``).

    clock      utcnow(), as_utc(ts)
    models     the tables (Job, Metric, Artifact, JobEvent, JobRun, ApiToken, JobTombstone), the status sets
    session    engines, session factories, schema version, connection-error test
    jobs       create, transition, reads, the queue (waiting, dependents, next queued, re-dispatch)
    leases     claim, the fenced lease of a running attempt, end of a run, expired leases
    metrics    metric upserts and downsampled reads
    artifacts  artifact names (checked), registration and reads
    listing    pages of jobs with an opaque cursor, the leaderboard
    tokens     named API tokens (SHA-256 hashed): create, find, list, revoke
    retention  deleting a finished job (with a tombstone), the retention sweep of old jobs' data
    roles      the PostgreSQL application role `pretextlab db upgrade` creates
"""
