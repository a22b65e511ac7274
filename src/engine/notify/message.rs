//! What a notification says: the JSON body POSTed for one event, with a `text` line that Slack
//! and Mattermost incoming webhooks display as is.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::deliveries::Claimed;

/// The body of one notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// The event log's kind: completed, failed, paused, cancelled or throttled.
    pub event: String,
    pub job: String,
    /// The state the event put the job in (its state now, for a `throttled` event).
    pub state: String,
    pub rows_scanned: i64,
    pub rows_updated: i64,
    /// From the job's start to the event; null if it never started.
    pub duration_seconds: Option<f64>,
    /// Who asked: a token's name, `daemon`, `cli` or `anonymous`.
    pub actor: String,
    /// The event's detail: the error of a failure, the reason given for a pause, the signal.
    pub detail: Option<String>,
    pub time: DateTime<Utc>,
    /// The event id in the job's event log (`GET /api/v1/jobs/{name}/events`): a receiver that
    /// was answered too late and is sent an event again can tell it by this.
    pub event_id: i64,
    pub text: String,
}

impl Notification {
    pub fn of(claimed: &Claimed) -> Notification {
        let state = claimed
            .to_state
            .clone()
            .unwrap_or_else(|| claimed.job_state.clone());
        let duration_seconds = claimed
            .started_at
            .map(|start| (claimed.at - start).num_milliseconds().max(0) as f64 / 1000.0);
        let mut notification = Notification {
            event: claimed.kind.clone(),
            job: claimed.job.clone(),
            state,
            rows_scanned: claimed.rows_scanned,
            rows_updated: claimed.rows_updated,
            duration_seconds,
            actor: claimed.actor.clone(),
            detail: claimed.detail.clone(),
            time: claimed.at,
            event_id: claimed.event_id,
            text: String::new(),
        };
        notification.text = notification.line();
        notification
    }

    /// One line for people: "backfilld: job `email_copy` completed by daemon after 3m 12s:
    /// 1200 rows updated of 2000 scanned".
    fn line(&self) -> String {
        let mut line = format!(
            "backfilld: job `{}` {} by {}",
            escape(&self.job),
            self.event,
            escape(&self.actor)
        );
        if let Some(seconds) = self.duration_seconds {
            let rounded = std::time::Duration::from_secs(seconds.round() as u64);
            line.push_str(&format!(" after {}", humantime::format_duration(rounded)));
        }
        line.push_str(&format!(
            ": {} rows updated of {} scanned",
            self.rows_updated, self.rows_scanned
        ));
        if let Some(detail) = &self.detail {
            line.push_str(&format!(" ({})", escape(&crate::spec::shorten(detail))));
        }
        line
    }
}

/// Slack's and Mattermost's message text gives `<…>` (links, mentions) and `&` a meaning; a job's
/// error text must show as written, not ping `<!channel>`.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(kind: &str, detail: Option<&str>) -> Claimed {
        let at: DateTime<Utc> = "2025-01-01T10:03:12Z".parse().unwrap();
        Claimed {
            event_id: 7,
            endpoint: "e".into(),
            attempts: 1,
            at,
            actor: "oncall".into(),
            kind: kind.into(),
            to_state: Some(kind.into()),
            detail: detail.map(String::from),
            job: "email_copy".into(),
            job_state: "running".into(),
            started_at: Some("2025-01-01T10:00:00Z".parse().unwrap()),
            rows_scanned: 2000,
            rows_updated: 1200,
        }
    }

    #[test]
    fn the_text_says_what_happened_in_one_line() {
        let n = Notification::of(&claimed("completed", None));
        assert_eq!(
            n.text,
            "backfilld: job `email_copy` completed by oncall after 3m 12s: 1200 rows updated of 2000 scanned"
        );
        assert_eq!(n.duration_seconds, Some(192.0));
        assert_eq!(n.state, "completed");
        let body = serde_json::to_value(&n).unwrap();
        for key in [
            "event",
            "job",
            "state",
            "rows_scanned",
            "rows_updated",
            "duration_seconds",
            "actor",
            "time",
            "text",
        ] {
            assert!(body.get(key).is_some(), "{key}: {body}");
        }
    }

    #[test]
    fn markup_in_an_error_is_shown_not_obeyed() {
        let n = Notification::of(&claimed("failed", Some("<!channel> & <http://x|y>")));
        assert!(
            n.text
                .ends_with("(&lt;!channel&gt; &amp; &lt;http://x|y&gt;)"),
            "{}",
            n.text
        );
        // The structured field keeps the text as it is.
        assert_eq!(n.detail.as_deref(), Some("<!channel> & <http://x|y>"));
    }
}
