-- Admitting one POST /v1/messages in one statement: the project's status
-- and limits are read, then its per-minute burst is counted and, if that
-- allowed it, its per-day limit. It was three statements (three round
-- trips) on every send; the rules are the same as before:
--   * no row: no such project;
--   * out_status other than 'active': refused before anything is counted;
--   * out_burst_count NULL: the burst window is full (or the limit is 0),
--     and the day was not counted;
--   * out_day_count NULL (with a burst count): the day is full.
-- A refused request still counts in the burst window it passed, as before.
-- The buckets' names are the ones the application used
-- ('project-burst:<id>', 'project-day:<id>'), so windows open across the
-- upgrade carry on. Counting commits asynchronously (rate_limit_hit, V7).
CREATE FUNCTION project_admit(
    p_project uuid,
    p_minute_start timestamptz, p_minute_end timestamptz,
    p_day_start timestamptz, p_day_end timestamptz
) RETURNS TABLE (
    out_status text, out_burst int, out_per_day int,
    out_burst_count int, out_day_count int
) LANGUAGE plpgsql AS $$
DECLARE
    p projects%ROWTYPE;
BEGIN
    SELECT * INTO p FROM projects WHERE id = p_project;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    out_status := p.status;
    out_burst := p.burst_per_minute;
    out_per_day := p.messages_per_day;
    IF p.status = 'active' AND p.burst_per_minute > 0 THEN
        SELECT h.hit_count INTO out_burst_count
          FROM rate_limit_hit('project-burst:' || p_project::text,
                              p_minute_start, p_minute_end, p.burst_per_minute) h;
        IF out_burst_count IS NOT NULL AND p.messages_per_day > 0 THEN
            SELECT h.hit_count INTO out_day_count
              FROM rate_limit_hit('project-day:' || p_project::text,
                                  p_day_start, p_day_end, p.messages_per_day) h;
        END IF;
    END IF;
    RETURN NEXT;
END;
$$;
