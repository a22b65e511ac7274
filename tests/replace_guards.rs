//! What a decision taken on an earlier read must not undo, and the replacements that would
//! redo or contradict work already done: a pause is not undone by a start that read the job
//! as queued; a sweep is not given a definition without `where`; a definition is not replaced
//! under its installed sync trigger; a process refuses an undeclared transaction pooler.

mod common;

use backfilld::engine::submit::{self, SubmitError};
use backfilld::engine::sync;
use backfilld::plumbing::db::Schema;
use backfilld::spec::JobSpec;
use backfilld::store::{jobs, JobState};
use common::pgbouncer::PgBouncer;
use common::{hits_table, set_state, start_job, TestDb};

const WITH_WHERE: &str = "name = \"j\"\ntable = \"t\"\nkey = \"id\"\nwhere = \"hits = 0\"\n";

async fn replace(db: &TestDb, toml: &str) -> Result<submit::Replaced, SubmitError> {
    let spec = JobSpec::from_toml(toml, "test").unwrap();
    let resolved = submit::resolve(&db.pool, &spec).await.unwrap();
    submit::replace(
        &db.pool,
        &Schema::new("backfilld"),
        &spec,
        &resolved,
        "test",
    )
    .await
}

#[tokio::test]
async fn a_start_decided_on_a_queued_job_does_not_undo_a_pause_since() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 10).await;
    let (runtime, _, _, _) = start_job(&db, &format!("{WITH_WHERE}[set]\nhits = \"1\"\n")).await;
    // As the scheduler does: it read the job as queued, then an operator paused it.
    set_state(&db, runtime.id, JobState::Paused, "test").await;
    let mut tx = db.pool.begin().await.unwrap();
    let done = jobs::transition_from(
        &mut tx,
        &Schema::new("backfilld"),
        runtime.id,
        Some(&[JobState::Queued]),
        JobState::Running,
        "daemon",
        Some("started by the daemon"),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(
        matches!(
            done,
            jobs::Transition::NotAllowed {
                current: JobState::Paused
            }
        ),
        "{done:?}"
    );
    let state = db
        .scalar_string("SELECT state FROM backfilld.jobs WHERE name = 'j'")
        .await;
    assert_eq!(state.as_deref(), Some("paused"));
}

#[tokio::test]
async fn a_sweeping_job_cannot_be_given_a_definition_without_where() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 10).await;
    let (runtime, _, _, _) = start_job(&db, &format!("{WITH_WHERE}[set]\nhits = \"1\"\n")).await;
    set_state(&db, runtime.id, JobState::Paused, "test").await;
    db.exec("UPDATE backfilld.jobs SET pass = 2").await;
    let without_where = "name = \"j\"\ntable = \"t\"\nkey = \"id\"\n[set]\nhits = \"2\"\n";
    let Err(refused) = replace(&db, without_where).await else {
        panic!("a definition without `where` replaced a sweeping job");
    };
    assert!(
        matches!(refused, SubmitError::ReplaceUnsafe(_)),
        "{refused}"
    );
    assert!(refused.to_string().contains("pass 2"), "{refused}");
    // With a `where`, the sweep goes on with the new definition.
    assert!(replace(&db, &format!("{WITH_WHERE}[set]\nhits = \"2\"\n"))
        .await
        .is_ok());
}

#[tokio::test]
async fn a_job_is_not_replaced_under_its_installed_sync_trigger() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 10).await;
    db.exec("ALTER TABLE t ADD COLUMN src int").await;
    let toml = format!("{WITH_WHERE}[set]\nhits = \"1\"\n[sync]\non = [\"src\"]\n");
    let (runtime, env, _, _) = start_job(&db, &toml).await;
    sync::ensure_installed(&env.pool, &env.schema, &runtime, "test")
        .await
        .unwrap();
    set_state(&db, runtime.id, JobState::Paused, "test").await;
    let fixed = format!("{WITH_WHERE}[set]\nhits = \"2\"\n[sync]\non = [\"src\"]\n");
    let Err(refused) = replace(&db, &fixed).await else {
        panic!("replaced under a trigger that applies the old `set`");
    };
    assert!(refused.to_string().contains("sync remove"), "{refused}");
    sync::remove(&db.pool, "j", None).await.unwrap();
    assert!(replace(&db, &fixed).await.is_ok());
}

#[tokio::test]
async fn an_undeclared_transaction_pooler_is_refused_with_the_setting_to_use() {
    let db = TestDb::new().await;
    hits_table(&db.pool, "t", "bigint", "i", 100).await;
    let bouncer = PgBouncer::start("transaction", 3);
    let job = db.write_job(
        "j.toml",
        "name = \"j\"\ntable = \"t\"\nkey = \"id\"\n[set]\nhits = \"hits + 1\"\n",
    );
    let output = common::cli_with_url(&bouncer.url(&db.name), &["run", job.to_str().unwrap()]);
    let said = common::text(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(said.contains("pool_mode = \"transaction\""), "{said}");
    // Refused before anything was written, the daemon's schema included.
    assert_eq!(db.scalar_i64("SELECT sum(hits)::int8 FROM t").await, 0);
    assert_eq!(
        db.scalar_i64("SELECT count(*)::int8 FROM pg_namespace WHERE nspname = 'backfilld'")
            .await,
        0
    );
}
