//! `window`: the job runs only within its daily hours, in the database's clock and the named
//! time zone.

use super::{Check, Signal};
use crate::plumbing::db::{self, Db};
use crate::spec::{JobSpec, Window};
use crate::status::Reason;

pub(super) fn of(spec: &JobSpec) -> Option<Box<dyn Signal>> {
    let window = Window::parse(spec.window.as_deref()?).ok()?;
    Some(Box::new(window))
}

impl Signal for Window {
    fn reason(&self) -> Reason {
        Reason::Window
    }

    fn check<'a>(&'a self, pool: &'a Db) -> Check<'a> {
        Box::pin(async move {
            let minute: i32 = db::query_scalar(
                "SELECT (extract(hour FROM now() AT TIME ZONE $1) * 60
                         + extract(minute FROM now() AT TIME ZONE $1))::int4",
            )
            .bind(&self.time_zone)
            .fetch_one(pool)
            .await?;
            let minute = minute.max(0) as u32;
            Ok((!self.contains(minute)).then(|| {
                format!(
                    "outside the window (now {:02}:{:02} {})",
                    minute / 60,
                    minute % 60,
                    self.time_zone
                )
            }))
        })
    }
}
