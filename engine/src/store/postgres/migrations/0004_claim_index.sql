-- Claims read a flow's queued items through `queue_ready` (flow, due time, id). With
-- `queue_due` beside it, the claim's generic plan read the queue by due time and filtered the
-- flow (every item of other flows due earlier read in vain), so PostgreSQL planned each claim
-- anew; the next due time is read through `queue_ready` too (one probe per flow).
DROP INDEX hookflow.queue_due;
