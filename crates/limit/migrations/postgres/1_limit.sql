-- Rate-limit state: one row per key (its policy's prefix included). Times are Unix
-- microseconds on the database server's clock unless the caller passes its own.
--   gcra:           a = theoretical arrival time
--   fixed_window:   a = window, b = count
--   sliding_window: a = window, b = previous window's count, c = current count
--   sliding_log:    b = units in the log, c = the last entry's sequence number
-- Keys compare byte by byte (COLLATE "C"), so that a limiter's keys are the range from its
-- prefix up and its sweep touches no other limiter's.
CREATE TABLE onephase_limits (
    key        TEXT   COLLATE "C" PRIMARY KEY,
    a          BIGINT NOT NULL,
    b          BIGINT NOT NULL,
    c          BIGINT NOT NULL,
    -- From when on the row is the same as no row: the sweep deletes it then.
    expires_us BIGINT NOT NULL
);

-- The sliding log's admissions.
CREATE TABLE onephase_limit_log (
    key   TEXT   COLLATE "C" NOT NULL,
    at_us BIGINT NOT NULL,
    seq   BIGINT NOT NULL,
    cost  BIGINT NOT NULL,
    PRIMARY KEY (key, at_us, seq)
);

-- One decision: the key's row is locked, the clock read after the lock (so decisions on a key
-- are made in the order of their clock readings), and the row written only when the units are
-- admitted. The arithmetic is the same as the library's `decide`, line for line.
CREATE FUNCTION onephase_limit_check(
    p_key TEXT, p_algorithm TEXT, p_limit BIGINT, p_period BIGINT, p_emission BIGINT,
    p_burst BIGINT, p_cost BIGINT, p_now BIGINT,
    OUT allowed BOOLEAN, OUT remaining BIGINT, OUT reset_us BIGINT, OUT retry_us BIGINT,
    OUT now_us BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    r onephase_limits%ROWTYPE;
    t BIGINT; tol BIGINT; base BIGINT; nt BIGINT; w BIGINT; n BIGINT; prev BIGINT;
    cur BIGINT; elapsed BIGINT; room BIGINT; excess BIGINT; wait BIGINT; freed BIGINT;
    e RECORD;
BEGIN
    LOOP
        SELECT * INTO r FROM onephase_limits WHERE key = p_key FOR UPDATE;
        EXIT WHEN FOUND;
        -- A fresh row, not yet expired, so that a sweep cannot take it before it is locked.
        INSERT INTO onephase_limits (key, a, b, c, expires_us)
        VALUES (p_key, 0, 0, 0, 9223372036854775807) ON CONFLICT (key) DO NOTHING;
    END LOOP;
    t := COALESCE(p_now, floor(extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT);
    now_us := t;
    IF r.expires_us = 9223372036854775807 THEN
        -- Fresh: the same as no state.
        r.a := -9223372036854775807; r.b := 0; r.c := 0;
        IF p_algorithm = 'sliding_log' THEN
            DELETE FROM onephase_limit_log WHERE key = p_key;
        END IF;
    END IF;
    IF p_algorithm = 'gcra' THEN
        tol := p_emission * p_burst;
        base := GREATEST(r.a, t);
        nt := base + p_emission * p_cost;
        allowed := nt - t <= tol;
        IF allowed THEN
            UPDATE onephase_limits SET a = nt, expires_us = nt WHERE key = p_key;
            remaining := (tol - (nt - t)) / p_emission; reset_us := nt - t; retry_us := 0;
        ELSE
            remaining := GREATEST(tol - (base - t), 0) / p_emission; reset_us := base - t;
            retry_us := nt - t - tol;
        END IF;
    ELSIF p_algorithm = 'fixed_window' THEN
        w := div(t, p_period);
        n := CASE WHEN r.a = w THEN r.b ELSE 0 END;
        reset_us := (w + 1) * p_period - t;
        allowed := n + p_cost <= p_limit;
        IF allowed THEN
            n := n + p_cost;
            UPDATE onephase_limits SET a = w, b = n, expires_us = (w + 1) * p_period
            WHERE key = p_key;
            retry_us := 0;
        ELSE
            retry_us := reset_us;
        END IF;
        remaining := p_limit - n;
    ELSIF p_algorithm = 'sliding_window' THEN
        w := div(t, p_period);
        IF r.a = w THEN prev := r.b; cur := r.c;
        ELSIF r.a = w - 1 THEN prev := r.c; cur := 0;
        ELSE prev := 0; cur := 0;
        END IF;
        elapsed := t - w * p_period;
        -- previous × (period − elapsed) / period + current, kept in units × period.
        room := p_limit * p_period;
        excess := prev * (p_period - elapsed) + (cur + p_cost) * p_period - room;
        allowed := excess <= 0;
        IF allowed THEN
            cur := cur + p_cost;
            UPDATE onephase_limits SET a = w, b = prev, c = cur, expires_us = (w + 2) * p_period
            WHERE key = p_key;
            retry_us := 0;
        ELSE
            wait := p_period - elapsed;
            IF prev > 0 AND (excess + prev - 1) / prev <= wait THEN
                wait := (excess + prev - 1) / prev;
            END IF;
            retry_us := wait;
        END IF;
        remaining := GREATEST(room - prev * (p_period - elapsed) - cur * p_period, 0) / p_period;
        reset_us := (w + 2) * p_period - t;
    ELSIF p_algorithm = 'sliding_log' THEN
        WITH gone AS (
            DELETE FROM onephase_limit_log WHERE key = p_key AND at_us <= t - p_period
            RETURNING cost)
        SELECT COALESCE(sum(cost), 0) INTO freed FROM gone;
        n := GREATEST(r.b - freed, 0);
        allowed := n + p_cost <= p_limit;
        IF allowed THEN
            n := n + p_cost;
            INSERT INTO onephase_limit_log (key, at_us, seq, cost) VALUES (p_key, t, r.c + 1, p_cost);
            UPDATE onephase_limits SET b = n, c = r.c + 1, expires_us = t + p_period
            WHERE key = p_key;
            reset_us := p_period; retry_us := 0;
        ELSE
            IF freed > 0 THEN
                UPDATE onephase_limits SET b = n WHERE key = p_key;
            END IF;
            SELECT COALESCE(max(at_us) + p_period - t, 0) INTO reset_us
            FROM onephase_limit_log WHERE key = p_key;
            -- The oldest admissions whose expiry frees enough room.
            freed := 0; retry_us := 0;
            FOR e IN SELECT at_us, cost FROM onephase_limit_log WHERE key = p_key
                     ORDER BY at_us, seq LOOP
                freed := freed + e.cost;
                retry_us := e.at_us + p_period - t;
                EXIT WHEN n - freed + p_cost <= p_limit;
            END LOOP;
        END IF;
        remaining := p_limit - n;
    ELSE
        RAISE EXCEPTION 'unknown rate-limit algorithm %', p_algorithm;
    END IF;
END
$$;
