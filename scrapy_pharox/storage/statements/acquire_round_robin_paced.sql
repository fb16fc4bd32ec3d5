-- The pool row, locked: round-robin acquires of one pool take turns and
-- each reads the cursor the one before it left; none while an expired
-- lease waits to be reclaimed (both searches then find nothing).
-- MATERIALIZED: run once, before the searches that read it, never
-- inlined into them.
WITH pool_row AS MATERIALIZED
  (SELECT pharox_pool.id AS id,
          pharox_pool.round_robin_cursor AS round_robin_cursor
   FROM pharox_pool
   WHERE pharox_pool.name = %(pool_name)s::VARCHAR
     AND
       (SELECT 1
        FROM pharox_lease AS e
        WHERE e.expires_at <= now()
        ORDER BY e.expires_at
        LIMIT 1) IS NULL
     FOR NO KEY
     UPDATE),
-- Proxies held back from the target domain now (resting there; paced,
-- also leased for it within reuse_delay): one range of the (domain,
-- cooldown_until) index, hashed once for the whole search.
cooldowns AS
  (SELECT pharox_domain_cooldown.proxy_id AS proxy_id
   FROM pharox_domain_cooldown
   WHERE pharox_domain_cooldown.domain = %(target_domain)s::VARCHAR
     AND (pharox_domain_cooldown.cooldown_until > now()
          -- Times are the database's: every process compares with one clock.
          OR pharox_domain_cooldown.leased_at > (now() + make_interval(secs => -CAST(%(reuse_delay)s AS DOUBLE PRECISION))))),
              -- The first free proxy after the cursor, in id order (an index walk).
              -- MATERIALIZED: its row lock is taken here, once; inlined, the planner
              -- could evaluate it again in from_start and in picked.
              after_cursor AS MATERIALIZED
  (SELECT pharox_proxy.id AS id,
          pharox_proxy.pool_id AS pool_id
   FROM pharox_proxy
   WHERE pharox_proxy.pool_id =
       (SELECT pool_row.id
        FROM pool_row)
     AND pharox_proxy.status = 'active'
     AND (pharox_proxy.max_concurrency IS NULL
          OR pharox_proxy.current_leases < pharox_proxy.max_concurrency)
     -- IS NOT TRUE: a NULL cooldown_until (never cooled) is eligible.
     AND (pharox_proxy.cooldown_until > now()) IS NOT true
     AND (pharox_proxy.id NOT IN
            (SELECT cooldowns.proxy_id
             FROM cooldowns))
     AND pharox_proxy.id >
       (SELECT pool_row.round_robin_cursor
        FROM pool_row)
   ORDER BY pharox_proxy.id
   LIMIT %(param_1)s::INTEGER
   -- Rows other transactions hold are skipped, not waited for. NO KEY
   -- UPDATE is the lock an UPDATE of non-key columns takes anyway.
   FOR NO KEY UPDATE OF pharox_proxy SKIP LOCKED),
-- Only when none is after the cursor: the first from the start (wrap).
from_start AS MATERIALIZED
  (SELECT pharox_proxy.id AS id,
          pharox_proxy.pool_id AS pool_id
   FROM pharox_proxy
   WHERE pharox_proxy.pool_id =
       (SELECT pool_row.id
        FROM pool_row)
     AND pharox_proxy.status = 'active'
     AND (pharox_proxy.max_concurrency IS NULL
          OR pharox_proxy.current_leases < pharox_proxy.max_concurrency)
     -- IS NOT TRUE: a NULL cooldown_until (never cooled) is eligible.
     AND (pharox_proxy.cooldown_until > now()) IS NOT true
     AND (pharox_proxy.id NOT IN
            (SELECT cooldowns.proxy_id
             FROM cooldowns))
     AND NOT (EXISTS
                (SELECT after_cursor.id
                 FROM after_cursor))
   ORDER BY pharox_proxy.id
   LIMIT %(param_2)s::INTEGER
   -- Rows other transactions hold are skipped, not waited for. NO KEY
   -- UPDATE is the lock an UPDATE of non-key columns takes anyway.
   FOR NO KEY UPDATE OF pharox_proxy SKIP LOCKED),
picked AS
  (SELECT after_cursor.id AS id,
          after_cursor.pool_id AS pool_id
   FROM after_cursor
   UNION ALL SELECT from_start.id AS id,
                    from_start.pool_id AS pool_id
   FROM from_start),
                                                   -- The pick stamps leased_at of its (proxy, domain) row, and is claimed
                                                   -- only if that row, read as committed now (ON CONFLICT reads the latest
                                                   -- row, waiting for an insert in flight), is out of its rest and delay:
                                                   -- the search's snapshot may predate another process's paced lease.
                                                   paced_use AS
  (INSERT INTO pharox_domain_cooldown (proxy_id, domain, consecutive_bans, leased_at) SELECT picked.id AS id,
                                                                                             %(target_domain)s::VARCHAR AS anon_1,
                                                                                             0,
                                                                                             now() AS anon_2
   FROM picked
   -- The (proxy, domain) row is created on its first ban, rest or paced
   -- lease, updated after.
   WHERE true ON CONFLICT (proxy_id,
                           domain) DO
     UPDATE
     -- IS NOT TRUE: a NULL cooldown_until (never cooled) is eligible.
     SET leased_at = now() WHERE (pharox_domain_cooldown.cooldown_until > now()) IS NOT true
     -- Times are the database's: every process compares with one clock.
     AND (pharox_domain_cooldown.leased_at > (now() + make_interval(secs => -CAST(%(reuse_delay)s AS DOUBLE PRECISION)))) IS NOT true RETURNING pharox_domain_cooldown.proxy_id AS id),
                                                   claimed AS
  (UPDATE pharox_proxy
   SET current_leases=(pharox_proxy.current_leases + %(current_leases_1)s::INTEGER)
   WHERE pharox_proxy.id =
       (SELECT paced_use.id
        FROM paced_use) RETURNING pharox_proxy.id,
                                  pharox_proxy.pool_id,
                                  pharox_proxy.protocol,
                                  pharox_proxy.host,
                                  pharox_proxy.host_key,
                                  pharox_proxy.port,
                                  pharox_proxy.username,
                                  pharox_proxy.password,
                                  pharox_proxy.status,
                                  pharox_proxy.checked_at,
                                  pharox_proxy.source,
                                  pharox_proxy.country,
                                  pharox_proxy.city,
                                  pharox_proxy.latitude,
                                  pharox_proxy.longitude,
                                  pharox_proxy.isp,
                                  pharox_proxy.asn,
                                  pharox_proxy.max_concurrency,
                                  pharox_proxy.current_leases,
                                  pharox_proxy.successes,
                                  pharox_proxy.bans,
                                  pharox_proxy.failures,
                                  pharox_proxy.consecutive_bans,
                                  pharox_proxy.consecutive_failures,
                                  pharox_proxy.latency_ms,
                                  pharox_proxy.cooldown_until,
                                  pharox_proxy.identity,
                                  pharox_proxy.session_id,
                                  pharox_proxy.session_seconds,
                                  pharox_proxy.session_started_at),
                                                   cursor_moved AS
  (UPDATE pharox_pool
   SET round_robin_cursor=claimed.id
   FROM claimed
   WHERE pharox_pool.id = claimed.pool_id RETURNING pharox_pool.id),
                                                   leased AS
  (INSERT INTO pharox_lease (id, proxy_id, pool_id, consumer_id, acquired_at, expires_at) SELECT %(lease_id)s::UUID AS anon_4,
                                                                                                 claimed.id AS id,
                                                                                                 claimed.pool_id AS pool_id,
                                                                                                 %(consumer_id)s::UUID AS anon_5,
                                                                                                 now() AS anon_6,
                                                                                                 -- Times are the database's: every process compares with one clock.
                                                                                                 (now() + make_interval(secs => %(seconds)s)) AS anon_7
   FROM claimed RETURNING pharox_lease.acquired_at,
                          pharox_lease.expires_at)
-- claimed.*, not each column: spelled out, the round-robin acquire by
-- domain would pass psycopg's 4096-byte cache of parsed queries.
SELECT claimed.*,
       leased.acquired_at,
       leased.expires_at,
       CASE
           WHEN (claimed.id IS NULL) THEN
                  (SELECT EXTRACT(EPOCH
                                  FROM (min(pharox_domain_cooldown.leased_at) - now())) + CAST(%(reuse_delay)s AS DOUBLE PRECISION) AS anon_3
                   FROM pharox_domain_cooldown
                   JOIN pharox_proxy ON pharox_proxy.id = pharox_domain_cooldown.proxy_id
                   WHERE pharox_domain_cooldown.domain = %(target_domain)s::VARCHAR
                     -- Times are the database's: every process compares with one clock.
                     AND pharox_domain_cooldown.leased_at > (now() + make_interval(secs => -CAST(%(reuse_delay)s AS DOUBLE PRECISION)))
                     -- IS NOT TRUE: a NULL cooldown_until (never cooled) is eligible.
                     AND (pharox_domain_cooldown.cooldown_until > now()) IS NOT true
                     AND pharox_proxy.pool_id =
                       (SELECT pool_row.id
                        FROM pool_row)
                     AND pharox_proxy.status = 'active'
                     AND (pharox_proxy.max_concurrency IS NULL
                          OR pharox_proxy.current_leases < pharox_proxy.max_concurrency)
                     -- IS NOT TRUE: a NULL cooldown_until (never cooled) is eligible.
                     AND (pharox_proxy.cooldown_until > now()) IS NOT true)
           ELSE NULL
       -- When nothing was claimed: the seconds until the first free proxy that
       -- only its reuse delay holds back comes out of it (NULL: none does).
       END AS paced_in,
       CASE
           WHEN (claimed.id IS NULL) THEN
                  (SELECT 1
                   FROM pharox_lease AS e
                   WHERE e.expires_at <= now()
                   ORDER BY e.expires_at
                   LIMIT 1) IS NOT NULL
           ELSE false
       END AS reclaim_needed,
       CASE
           WHEN (claimed.id IS NULL) THEN (EXISTS
                                             (SELECT *
                                              FROM pharox_proxy
                                              WHERE pharox_proxy.pool_id =
                                                  (SELECT pool_row.id
                                                   FROM pool_row)
                                                AND pharox_proxy.status = 'active'
                                                AND (pharox_proxy.max_concurrency IS NULL
                                                     OR pharox_proxy.current_leases < pharox_proxy.max_concurrency)
                                                -- IS NOT TRUE: a NULL cooldown_until (never cooled) is eligible.
                                                AND (pharox_proxy.cooldown_until > now()) IS NOT true
                                                AND (pharox_proxy.id NOT IN
                                                       (SELECT cooldowns.proxy_id
                                                        FROM cooldowns))))
                OR (EXISTS
                      (SELECT picked.id
                       FROM picked))
           ELSE false
       END AS contended
FROM
  -- One row even when nothing was claimed: its NULL id says so.
  (SELECT 1 AS one) AS one
LEFT OUTER JOIN claimed ON true
LEFT OUTER JOIN leased ON true
