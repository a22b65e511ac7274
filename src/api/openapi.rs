//! The OpenAPI document, generated from the handlers' annotations so it cannot drift from them.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::{error, jobs};
use crate::status::view;

#[derive(OpenApi)]
#[openapi(
    info(title = "backfilld", description = "Control API of the backfilld daemon"),
    paths(
        jobs::list_jobs,
        jobs::submit_job,
        jobs::get_job,
        jobs::patch_job,
        jobs::pause_job,
        jobs::resume_job,
        jobs::cancel_job,
        jobs::job_events
    ),
    components(schemas(
        view::JobView,
        view::PartitionView,
        view::JobList,
        crate::store::events::Event,
        view::EventList,
        error::ErrorBody,
        jobs::Tuning,
        crate::spec::JobSpec
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
