-- The lease leaves the active table. A second or late release matches
-- no row, and everything below hangs off gone: it changes nothing.
WITH gone AS
  (DELETE
   FROM pharox_lease
   WHERE pharox_lease.id = %(lease_id)s::UUID RETURNING pharox_lease.id,
                                                        pharox_lease.proxy_id,
                                                        pharox_lease.pool_id,
                                                        pharox_lease.consumer_id,
                                                        pharox_lease.acquired_at,
                                                        pharox_lease.expires_at),
     freed AS
  (UPDATE pharox_proxy
   SET current_leases=(pharox_proxy.current_leases - %(current_leases_1)s::INTEGER),
       latency_ms=CASE
                      WHEN (CAST(%(latency)s AS DOUBLE PRECISION) IS NULL) THEN pharox_proxy.latency_ms
                      WHEN (pharox_proxy.latency_ms IS NULL) THEN CAST(%(latency)s AS DOUBLE PRECISION)
                      ELSE %(param_1)s * pharox_proxy.latency_ms + %(param_2)s * CAST(%(latency)s AS DOUBLE PRECISION)
                  END
   WHERE pharox_proxy.id =
       (SELECT gone.proxy_id
        FROM gone) RETURNING CASE
                                 -- A notice of the release, sent at commit, to the waiters of every
                                 -- process (sql_release.RELEASE_CHANNEL), only when the proxy was full
                                 -- before (RETURNING sees the row after): a request waits only when it
                                 -- found no free slot, so a slot given back on a proxy with one left, or
                                 -- without a limit, wakes nobody.
                                 WHEN (pharox_proxy.max_concurrency = pharox_proxy.current_leases + 1) THEN pg_notify(%(pg_notify_1)s::VARCHAR, CAST(json_build_array(current_schema(), %(pool_name)s::VARCHAR,
                                                                                                                                                                        (SELECT gone.id
                                                                                                                                                                         FROM gone)) AS TEXT))
                                 ELSE NULL
                             END AS told),
     domain_rested AS
  (INSERT INTO pharox_domain_cooldown (proxy_id, domain, consecutive_bans, cooldown_until) SELECT gone.proxy_id AS proxy_id,
                                                                                                  %(target_domain)s::VARCHAR AS anon_1,
                                                                                                  0,
                                                                                                  -- Times are the database's: every process compares with one clock.
                                                                                                  (now() + make_interval(secs => CAST(%(rest_seconds)s AS DOUBLE PRECISION))) AS anon_2
   FROM gone
   -- The (proxy, domain) row is created on its first ban, rest or paced
   -- lease, updated after.
   WHERE true ON CONFLICT (proxy_id,
                           domain) DO
     UPDATE
     SET cooldown_until = CASE
                              -- Times are the database's: every process compares with one clock.
                              WHEN (pharox_domain_cooldown.cooldown_until > (now() + make_interval(secs => CAST(%(rest_seconds)s AS DOUBLE PRECISION)))) THEN pharox_domain_cooldown.cooldown_until
                              -- Times are the database's: every process compares with one clock.
                              ELSE (now() + make_interval(secs => CAST(%(rest_seconds)s AS DOUBLE PRECISION)))
                          END RETURNING pharox_domain_cooldown.proxy_id)
INSERT INTO pharox_lease_history (id, proxy_id, pool_id, consumer_id, acquired_at, expires_at, released_at, outcome)
SELECT gone.id,
       gone.proxy_id,
       gone.pool_id,
       gone.consumer_id,
       gone.acquired_at,
       gone.expires_at,
       now() AS anon_3,
       %(param_3)s::VARCHAR AS anon_4
-- The history row is the statement: a row when the lease was released,
-- none when it was no longer active (no scan of gone again to say so).
FROM gone RETURNING true AS released
