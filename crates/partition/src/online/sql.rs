//! The tables and the trigger a move keeps in the *source* shard, and the fence table every
//! shard holds. Names and bounds reach SQL text only through [`ident`] and [`literal`].

use crate::online::{KeyKind, MoveError, MoveSpec};

/// Quotes a validated identifier (`name` or `schema.name`).
pub(crate) fn ident(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(".")
}

/// Checks a table or column name: letters, digits and `_`, not starting with a digit, with
/// at most one `.` for a table's schema.
pub(crate) fn check_ident(what: &str, name: &str, parts: usize) -> Result<(), MoveError> {
    let pieces: Vec<&str> = name.split('.').collect();
    let plain = |p: &&str| {
        !p.is_empty()
            && p.len() <= 63
            && !p.starts_with(|c: char| c.is_ascii_digit())
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if pieces.len() <= parts && pieces.iter().all(plain) {
        Ok(())
    } else {
        Err(MoveError::Invalid(format!(
            "{what} {name:?}: use letters, digits and '_' (at most 63 each){}",
            if parts > 1 {
                ", as name or schema.name"
            } else {
                ""
            }
        )))
    }
}

/// A key as an SQL literal of its column's kind: an integer as written (it was parsed), text
/// quoted with its quotes doubled.
pub(crate) fn literal(kind: KeyKind, key: &str) -> Result<String, MoveError> {
    match kind {
        KeyKind::Integer => key.parse::<i64>().map(|n| n.to_string()).map_err(|_| {
            MoveError::Invalid(format!(
                "range bound {key:?} is not an integer, but the key column is"
            ))
        }),
        KeyKind::Text => {
            if key.contains('\0') {
                return Err(MoveError::Invalid("a range bound holds a NUL byte".into()));
            }
            Ok(format!("'{}'", key.replace('\'', "''")))
        }
    }
}

/// The predicate "the row's key lies in the moving range", over `column` of a row alias.
pub(crate) fn in_range(spec: &MoveSpec, kind: KeyKind, column: &str) -> Result<String, MoveError> {
    let key = match kind {
        KeyKind::Integer => column.to_owned(),
        // Byte order, as the partitioner's order of non-integer keys.
        KeyKind::Text => format!("({column} COLLATE \"C\")"),
    };
    let mut parts = Vec::new();
    if let Some(lo) = &spec.lo {
        parts.push(format!("{key} >= {}", literal(kind, lo)?));
    }
    if let Some(hi) = &spec.hi {
        parts.push(format!("{key} < {}", literal(kind, hi)?));
    }
    Ok(if parts.is_empty() {
        "TRUE".into()
    } else {
        parts.join(" AND ")
    })
}

/// The fence table, in every shard: the lowest map version a writer of a partition must hold.
pub(crate) const FENCES: &str = "CREATE TABLE IF NOT EXISTS onephase_partition_fences (
    map text NOT NULL,
    partition integer NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (map, partition))";

/// The moves and their changes, in the source shard.
pub(crate) const MOVES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS onephase_partition_moves (
        id text PRIMARY KEY,
        map text NOT NULL,
        partition integer NOT NULL,
        spec jsonb NOT NULL,
        phase text NOT NULL,
        copied_after text,
        copied_rows bigint NOT NULL DEFAULT 0,
        total_rows bigint NOT NULL DEFAULT 0,
        apply_round bigint NOT NULL DEFAULT 0,
        verify_round bigint,
        chunks_verified bigint NOT NULL DEFAULT 0,
        chunks_repaired bigint NOT NULL DEFAULT 0,
        fenced_at timestamptz,
        switched_at timestamptz,
        error text,
        started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        updated_at timestamptz NOT NULL DEFAULT clock_timestamp())",
    "CREATE TABLE IF NOT EXISTS onephase_partition_changes (
        seq bigserial PRIMARY KEY,
        move_id text NOT NULL,
        key text NOT NULL,
        applied_round bigint)",
    "CREATE INDEX IF NOT EXISTS onephase_partition_changes_pending
        ON onephase_partition_changes (move_id, seq) WHERE applied_round IS NULL",
    "CREATE INDEX IF NOT EXISTS onephase_partition_changes_round
        ON onephase_partition_changes (move_id, applied_round)",
    // The capture trigger's function, shared by every move: its arguments are the move id,
    // the map, the partition, the key column, the range predicate's kind and bounds, and the
    // map version the move started from. A write to the moving range takes the fence row's
    // key-share lock (so the cutover's update waits for it to commit), is refused once the
    // fence is raised, and otherwise records its key for the catch-up. After the move the
    // trigger stays as the range's guard. The mover's own writes set
    // `onephase.partition_bypass` for their transaction and pass.
    r#"CREATE OR REPLACE FUNCTION onephase_partition_capture() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
    DECLARE
        keys text[] := ARRAY[]::text[];
        k text;
        fence bigint;
    BEGIN
        IF current_setting('onephase.partition_bypass', true) = 'on' THEN
            RETURN NULL;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            keys := keys || (to_jsonb(NEW) ->> TG_ARGV[3]);
        END IF;
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            keys := keys || (to_jsonb(OLD) ->> TG_ARGV[3]);
        END IF;
        FOREACH k IN ARRAY keys LOOP
            CONTINUE WHEN k IS NULL;
            IF TG_ARGV[4] = 'integer' THEN
                CONTINUE WHEN TG_ARGV[5] <> '' AND k::bigint < TG_ARGV[5]::bigint;
                CONTINUE WHEN TG_ARGV[6] <> '' AND k::bigint >= TG_ARGV[6]::bigint;
            ELSE
                CONTINUE WHEN TG_ARGV[5] <> '' AND (k COLLATE "C") < (TG_ARGV[5] COLLATE "C");
                CONTINUE WHEN TG_ARGV[6] <> '' AND (k COLLATE "C") >= (TG_ARGV[6] COLLATE "C");
            END IF;
            SELECT f.version INTO fence FROM onephase_partition_fences f
                WHERE f.map = TG_ARGV[1] AND f.partition = TG_ARGV[2]::integer FOR KEY SHARE;
            IF fence IS NOT NULL AND fence > TG_ARGV[7]::bigint THEN
                RAISE EXCEPTION 'partition % of map % moved to another shard (map version %): fetch the map again and write there', TG_ARGV[2], TG_ARGV[1], fence
                    USING ERRCODE = 'OP001', HINT = 'onephase partition move ' || TG_ARGV[0];
            END IF;
            INSERT INTO onephase_partition_changes (move_id, key) VALUES (TG_ARGV[0], k);
        END LOOP;
        RETURN NULL;
    END
    $fn$"#,
];

/// The trigger's name for a move (at most 63 bytes: the id is a UUID).
pub(crate) fn trigger_name(spec: &MoveSpec) -> String {
    format!("onephase_move_{}", spec.id.simple())
}

/// `CREATE TRIGGER` for a move on its table.
pub(crate) fn create_trigger(spec: &MoveSpec, kind: KeyKind) -> Result<String, MoveError> {
    let arg = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let bound = |b: &Option<String>| -> Result<String, MoveError> {
        match b {
            Some(b) => {
                literal(kind, b)?;
                Ok(arg(b))
            }
            None => Ok("''".into()),
        }
    };
    Ok(format!(
        "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW \
         EXECUTE FUNCTION onephase_partition_capture({}, {}, '{}', {}, '{}', {}, {}, '{}')",
        ident(&trigger_name(spec)),
        ident(&spec.table),
        arg(&spec.id.to_string()),
        arg(&spec.map),
        spec.partition,
        arg(&spec.key),
        kind.as_str(),
        bound(&spec.lo)?,
        bound(&spec.hi)?,
        spec.from_version,
    ))
}
