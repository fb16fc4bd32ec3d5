-- Expired leases no other release or reclaim holds now. MATERIALIZED:
-- the DELETE removes exactly the rows locked here.
WITH doomed AS MATERIALIZED
  (SELECT pharox_lease.id AS id
   FROM pharox_lease
   WHERE pharox_lease.expires_at <= now()
     FOR
     UPDATE SKIP LOCKED),
-- The lease leaves the active table. A second or late release matches
-- no row, and everything below hangs off gone: it changes nothing.
gone AS
  (DELETE
   FROM pharox_lease USING doomed
   WHERE pharox_lease.id = doomed.id RETURNING pharox_lease.id,
                                               pharox_lease.proxy_id,
                                               pharox_lease.pool_id,
                                               pharox_lease.consumer_id,
                                               pharox_lease.acquired_at,
                                               pharox_lease.expires_at),
                          per_proxy AS
  (SELECT gone.proxy_id AS proxy_id,
          count(*) AS expired
   FROM gone
   GROUP BY gone.proxy_id),
                          -- Their proxies, locked in id order, so two reclaims never deadlock.
                          locked_proxies AS MATERIALIZED
  (SELECT pharox_proxy.id AS id
   FROM pharox_proxy
   WHERE pharox_proxy.id IN
       (SELECT per_proxy.proxy_id
        FROM per_proxy)
   ORDER BY pharox_proxy.id
   FOR NO KEY UPDATE OF pharox_proxy),
freed AS
  (UPDATE pharox_proxy
   SET current_leases=(pharox_proxy.current_leases - per_proxy.expired)
   FROM per_proxy
   WHERE pharox_proxy.id = per_proxy.proxy_id
     AND pharox_proxy.id IN
       (SELECT locked_proxies.id
        FROM locked_proxies) RETURNING pharox_proxy.id),
                                       logged_expired AS
  (INSERT INTO pharox_lease_history (id, proxy_id, pool_id, consumer_id, acquired_at, expires_at, released_at, outcome) SELECT gone.id AS id,
                                                                                                                               gone.proxy_id AS proxy_id,
                                                                                                                               gone.pool_id AS pool_id,
                                                                                                                               gone.consumer_id AS consumer_id,
                                                                                                                               gone.acquired_at AS acquired_at,
                                                                                                                               gone.expires_at AS expires_at,
                                                                                                                               now() AS anon_1,
                                                                                                                               %(param_1)s::VARCHAR AS anon_2
   FROM gone RETURNING pharox_lease_history.id)
SELECT count(*) AS count_1
FROM gone
