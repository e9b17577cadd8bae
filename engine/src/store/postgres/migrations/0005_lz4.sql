-- Events, runs and step records of more than about 2 KB are compressed when stored. lz4 costs a
-- fraction of the CPU of PostgreSQL's own pglz (which took 2 % of the machine at full load);
-- servers built without lz4 (and PostgreSQL 13, which cannot choose) keep pglz. Values already
-- stored keep their compression; both are read alike.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings
                WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)) THEN
        EXECUTE 'ALTER TABLE hookflow.events ALTER COLUMN data SET COMPRESSION lz4';
        EXECUTE 'ALTER TABLE hookflow.runs ALTER COLUMN data SET COMPRESSION lz4';
        EXECUTE 'ALTER TABLE hookflow.step_records ALTER COLUMN data SET COMPRESSION lz4';
    END IF;
END
$$;
