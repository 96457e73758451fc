-- One rate-limit hit: counts a request in its (bucket, window) unless the
-- window is full, and returns the new count (no row: refused).
--
-- Every request of a key or project increments the same row, so the row
-- lock is that bucket's bottleneck; a synchronous commit would hold it
-- across a WAL flush. A counter needs no durability: if the database
-- crashes, at most the last few milliseconds of hits are forgotten and a
-- client may get that many extra requests in that window. So the hit
-- commits asynchronously, and the lock is held only for the update itself.
CREATE FUNCTION rate_limit_hit(p_bucket text, p_start timestamptz, p_end timestamptz, p_limit int)
RETURNS TABLE (hit_count int) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
        INSERT INTO rate_limit_windows AS w (bucket, window_start, count, expires_at)
        VALUES (p_bucket, p_start, 1, p_end)
        ON CONFLICT (bucket, window_start)
        DO UPDATE SET count = w.count + 1 WHERE w.count < p_limit
        RETURNING w.count;
END;
$$;
