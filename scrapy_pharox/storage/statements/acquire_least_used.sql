-- The first free proxy in selector order. MATERIALIZED: the row lock is
-- taken once, here; inlined into the UPDATE it could lock other rows.
WITH picked AS MATERIALIZED
  (SELECT pharox_proxy.id AS id,
          pharox_proxy.pool_id AS pool_id
   FROM pharox_proxy
   WHERE pharox_proxy.pool_id =
       (SELECT pharox_pool.id
        FROM pharox_pool
        WHERE pharox_pool.name = %(pool_name)s::VARCHAR)
     AND pharox_proxy.status = 'active'
     AND (pharox_proxy.max_concurrency IS NULL
          OR pharox_proxy.current_leases < pharox_proxy.max_concurrency)
     -- IS NOT TRUE: a NULL cooldown_until (never cooled) is eligible.
     AND (pharox_proxy.cooldown_until > now()) IS NOT true
     AND
       (SELECT 1
        FROM pharox_lease AS e
        WHERE e.expires_at <= now()
        ORDER BY e.expires_at
        LIMIT 1) IS NULL
   ORDER BY pharox_proxy.current_leases,
            pharox_proxy.checked_at,
            pharox_proxy.id
   LIMIT %(param_1)s::INTEGER
   -- Rows other transactions hold are skipped, not waited for. NO KEY
   -- UPDATE is the lock an UPDATE of non-key columns takes anyway.
   FOR NO KEY UPDATE OF pharox_proxy SKIP LOCKED),
leased AS
  (INSERT INTO pharox_lease (id, proxy_id, pool_id, consumer_id, acquired_at, expires_at) SELECT %(lease_id)s::UUID AS anon_1,
                                                                                                 picked.id AS id,
                                                                                                 picked.pool_id AS pool_id,
                                                                                                 %(consumer_id)s::UUID AS anon_2,
                                                                                                 now() AS anon_3,
                                                                                                 -- Times are the database's: every process compares with one clock.
                                                                                                 (now() + make_interval(secs => %(seconds)s)) AS anon_4
   FROM picked)
UPDATE pharox_proxy
SET current_leases=(pharox_proxy.current_leases + %(current_leases_1)s::INTEGER)
WHERE pharox_proxy.id =
    (SELECT picked.id
     -- The claim is the statement, and no row comes back when nothing was
     -- picked: no CTE of the claim to scan, no one-row join around it. Its
     -- columns are named, not *: PostgreSQL fixes what * stands for at
     -- PREPARE, and refuses the statement once a column is added.
     FROM picked) RETURNING pharox_proxy.id,
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
                            pharox_proxy.session_started_at,
                            now() AS acquired_at,
                            -- Times are the database's: every process compares with one clock.
                            (now() + make_interval(secs => %(seconds)s)) AS expires_at
