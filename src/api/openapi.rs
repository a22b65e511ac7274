//! The OpenAPI document. Its paths are collected from the routes as they are registered, each
//! with the role it needs ([`crate::api::auth::GuardedRouter`]), so the document cannot list a
//! route that is not served, miss one that is, or show another role than the one enforced;
//! this module adds the info, the bearer security scheme and the shared schemas.

use axum::routing::{get, MethodRouter};
use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::auth::BEARER_SCHEME;
use crate::api::{error, jobs, AppState};
use crate::status::view;

/// What the document has beside the routes' own paths.
#[derive(OpenApi)]
#[openapi(
    info(title = "backfilld", description = "Control API of the backfilld daemon"),
    components(schemas(
        view::JobView,
        view::PartitionView,
        view::JobList,
        crate::store::events::Event,
        view::EventList,
        error::ErrorBody,
        jobs::Tuning,
        jobs::Action,
        crate::spec::JobSpec
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                BEARER_SCHEME,
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// The whole document, from the paths and schemas that the routes declared.
pub fn document(declared: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    document.merge(declared);
    document
}

/// `GET /api/v1/openapi.json`, serving `document`.
pub fn serve(document: utoipa::openapi::OpenApi) -> MethodRouter<AppState> {
    get(move || std::future::ready(Json(document.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::Auth;

    #[test]
    fn the_document_keeps_its_info_scheme_and_schemas_beside_the_routes() {
        let (_, declared) = jobs::router(&Auth::from_config(&[]).unwrap()).split_for_parts();
        let document = serde_json::to_value(document(declared)).unwrap();
        assert_eq!(document["info"]["title"], "backfilld");
        assert_eq!(
            document["components"]["securitySchemes"][BEARER_SCHEME]["scheme"],
            "bearer"
        );
        for schema in [
            "JobView",
            "PartitionView",
            "JobList",
            "Event",
            "EventList",
            "ErrorBody",
            "Tuning",
            "Action",
            "JobSpec",
        ] {
            assert!(
                document["components"]["schemas"][schema].is_object(),
                "{schema}"
            );
        }
        assert_eq!(document["paths"].as_object().unwrap().len(), 6);
    }
}
