-- Each claim of a run raises its fence, and every write of an orchestrator names the fence of
-- the claim it holds. An orchestrator that was paused past its claim (and one that claimed
-- the run again meanwhile) can therefore neither start an attempt that another claim started
-- nor overwrite its outcome: its write finds a newer fence and changes nothing. An operator's
-- change raises it too, so a driver in flight cannot undo it.
ALTER TABLE onephase_saga_runs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
