//! The result file: one JSON object per run (the shape users read, see docs/guide.md), fields in this order.

use serde::Serialize;
use serde_json::Value;

use crate::script::Outcome;
use crate::store::Job;
use crate::util::rfc3339;

#[derive(Debug, Serialize)]
pub struct RunResult<'a> {
    pub id: &'a str,
    pub script: &'a str,
    pub caller: &'a str,
    pub target: &'a str,
    pub status: &'static str,
    pub value: &'a Value,
    pub output: &'a str,
    pub error: Option<&'a str>,
    pub submitted_at: String,
    pub finished_at: String,
    pub duration_us: u64,
    pub operations: u64,
}

impl<'a> RunResult<'a> {
    pub fn new(
        job: &'a Job,
        target: &'a str,
        o: &'a Outcome,
        submitted_ns: i64,
        finished_ns: i64,
    ) -> RunResult<'a> {
        RunResult {
            id: &job.id,
            script: &job.name,
            caller: &job.caller,
            target,
            status: o.status.as_str(),
            value: &o.value,
            output: &o.output,
            error: o.error.as_deref(),
            submitted_at: rfc3339(submitted_ns),
            finished_at: rfc3339(finished_ns),
            duration_us: o.duration.as_micros() as u64,
            operations: o.operations,
        }
    }
}
