//! The JSON API's routes: each one parses its request, runs a [`crate::service`] call
//! on the blocking pool, and answers JSON (or an image).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{bad_request, not_found, ApiError};
use super::files;
use super::{AppState, MAX_QUERY_CHARS, MAX_TEXTS_PER_REQUEST};
use crate::error::{BadRequest, Param};
use crate::pipeline::texts::TextEntry;
use crate::service::search::{read_roots, search, QueryInput, SearchRequest, SearchResponse};
use crate::service::{manage, texts};
use crate::Error;

type Shared = Arc<AppState>;
type ApiResult<T> = Result<T, ApiError>;

/// Most results one request may ask for (`k`), and deepest page (`offset`).
const MAX_K: usize = 1000;
const MAX_OFFSET: usize = 10_000;

pub(super) fn routes(max_upload_bytes: usize) -> Router<Shared> {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/info", get(info))
        .route("/api/search", get(search_text))
        .route(
            "/api/search/image",
            get(search_indexed_image)
                .post(search_uploaded_image)
                .layer(DefaultBodyLimit::max(max_upload_bytes)),
        )
        .route("/api/texts", get(list_texts).post(add_texts))
        .route(
            "/api/index",
            get(index_status)
                .post(start_indexing)
                .delete(cancel_indexing),
        )
        .route("/api/images/{id}", get(image))
        .route("/api/images/{id}/thumbnail", get(thumbnail))
}

pub(super) fn not_found_route() -> Response {
    not_found("this route").into_response()
}

/// Runs `f` on the blocking pool (model and index work must not stall the async threads).
async fn blocking<T: Send + 'static>(
    state: &Shared,
    f: impl FnOnce(&AppState) -> crate::Result<T> + Send + 'static,
) -> ApiResult<T> {
    let s = state.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| ApiError(Error::Internal(format!("request task: {e}"))))?
        .map_err(ApiError)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn info(State(state): State<Shared>) -> ApiResult<Json<Value>> {
    let info = blocking(&state, |s| {
        Ok(manage::info(&s.collection.index, s.collection.index.path()))
    })
    .await?;
    let mut v = serde_json::to_value(info).unwrap_or_default();
    v["indexing"] = serde_json::to_value(state.indexing.status()).unwrap_or_default();
    Ok(Json(v))
}

/// Query parameters of the search routes.
#[derive(Debug, Deserialize)]
struct SearchQuery {
    q: Option<String>,
    id: Option<u64>,
    texts: Option<bool>,
    k: Option<usize>,
    offset: Option<usize>,
    rerank: Option<usize>,
    min_prob: Option<f32>,
    under: Option<String>,
    ann: Option<bool>,
}

impl SearchQuery {
    fn request(&self, query: QueryInput) -> ApiResult<SearchRequest> {
        let k = self.k.unwrap_or(10);
        if !(1..=MAX_K).contains(&k) {
            return Err(BadRequest::OutOfRange {
                param: Param::K,
                expected: "between 1 and 1000",
            }
            .into());
        }
        let offset = self.offset.unwrap_or(0);
        if offset > MAX_OFFSET {
            return Err(BadRequest::OutOfRange {
                param: Param::Offset,
                expected: "at most 10000",
            }
            .into());
        }
        Ok(SearchRequest {
            query,
            texts: self.texts.unwrap_or(false),
            k,
            offset,
            rerank: self.rerank,
            min_prob: self.min_prob,
            // A filter only: compared with indexed paths, never opened.
            under: self
                .under
                .as_ref()
                .filter(|u| !u.is_empty())
                .map(Into::into),
            ann: self.ann.unwrap_or(false),
        })
    }
}

fn query_params(q: Result<Query<SearchQuery>, QueryRejection>) -> ApiResult<SearchQuery> {
    q.map(|Query(q)| q)
        .map_err(|e| bad_request(format!("query parameters: {}", e.body_text())))
}

/// The search document, with each image result's URLs added.
fn served(response: SearchResponse) -> Json<Value> {
    let mut v = serde_json::to_value(response).unwrap_or_default();
    if let Some(results) = v["results"].as_array_mut() {
        for r in results {
            if let Some(id) = r["image_id"].as_u64() {
                r["thumbnail_url"] = json!(format!("/api/images/{id}/thumbnail"));
                r["image_url"] = json!(format!("/api/images/{id}"));
            }
        }
    }
    Json(v)
}

async fn run_search(state: &Shared, req: SearchRequest) -> ApiResult<Json<Value>> {
    // A search that decodes images (an indexed query image, or candidates reranked
    // without stored vision features) waits for a decode permit; text searches do not,
    // so that the batcher can merge them.
    let stored = state.collection.index.manifest().store_vision_features;
    let decodes = match req.query {
        QueryInput::Text(_) => !stored && req.rerank.is_some_and(|n| n > 0),
        _ => true,
    };
    let permit = match decodes {
        true => Some(state.decodes.permit().await),
        false => None,
    };
    let response = blocking(state, move |s| {
        let response = search(&s.collection, &s.model, &s.settings, &req);
        drop(permit);
        response
    })
    .await?;
    Ok(served(response))
}

async fn search_text(
    State(state): State<Shared>,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = query_params(q)?;
    let text = q.q.clone().unwrap_or_default();
    let req = q.request(QueryInput::Text(text))?;
    run_search(&state, req).await
}

async fn search_indexed_image(
    State(state): State<Shared>,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = query_params(q)?;
    let id =
        q.id.ok_or_else(|| bad_request("give the image's id: ?id=IMAGE_ID"))?;
    let req = q.request(QueryInput::IndexedImage(id))?;
    run_search(&state, req).await
}

/// The image is the raw body, or the first file field of a multipart form. The upload
/// is admitted before its body is read (or refused with 503: [`super::limits`]).
async fn search_uploaded_image(
    State(state): State<Shared>,
    q: Result<Query<SearchQuery>, QueryRejection>,
    request: Request,
) -> ApiResult<Json<Value>> {
    let q = query_params(q)?;
    let _admission = state.decodes.admit()?;
    let bytes = upload(&state, request).await?;
    if bytes.is_empty() {
        return Err(bad_request("the upload is empty: send an image"));
    }
    let req = q.request(QueryInput::ImageBytes(bytes))?;
    run_search(&state, req).await
}

async fn upload(state: &Shared, request: Request) -> ApiResult<Bytes> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"multipart/"));
    let too_large = |status: StatusCode| status == StatusCode::PAYLOAD_TOO_LARGE;
    if !multipart {
        return Bytes::from_request(request, state).await.map_err(|e| {
            if too_large(e.status()) {
                over_limit(state)
            } else {
                bad_request(e.body_text())
            }
        });
    }
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|e| bad_request(e.body_text()))?;
    loop {
        let field = form.next_field().await.map_err(|e| {
            if too_large(e.status()) {
                over_limit(state)
            } else {
                bad_request(e.body_text())
            }
        })?;
        let Some(field) = field else {
            return Err(bad_request("the form has no file"));
        };
        if field.file_name().is_some() || field.name() == Some("image") {
            return field.bytes().await.map_err(|e| {
                if too_large(e.status()) {
                    over_limit(state)
                } else {
                    bad_request(e.body_text())
                }
            });
        }
    }
}

/// An upload over the limit: 413.
fn over_limit(state: &Shared) -> ApiError {
    ApiError(Error::UploadTooLarge {
        limit_bytes: state.max_upload_bytes,
    })
}

async fn list_texts(State(state): State<Shared>) -> ApiResult<Json<Value>> {
    let list = blocking(&state, |s| Ok(texts::list(&s.collection.index))).await?;
    Ok(Json(json!({ "texts": list })))
}

#[derive(Deserialize)]
struct AddTexts {
    texts: Vec<TextEntry>,
}

async fn add_texts(
    State(state): State<Shared>,
    body: Result<Json<AddTexts>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body.map_err(|e| bad_request(e.body_text()))?;
    check_texts(&body.texts)?;
    let summary = blocking(&state, move |s| {
        texts::add(&s.collection, "request", &body.texts, s.batch, false)
    })
    .await?;
    Ok(Json(serde_json::to_value(summary).unwrap_or_default()))
}

/// Refuses more texts, or longer ones, than a request may add.
fn check_texts(texts: &[TextEntry]) -> ApiResult<()> {
    if texts.len() > MAX_TEXTS_PER_REQUEST {
        return Err(Error::TooManyTexts {
            count: texts.len(),
            limit: MAX_TEXTS_PER_REQUEST,
        }
        .into());
    }
    for t in texts {
        let chars = t.text.chars().count();
        if chars > MAX_QUERY_CHARS {
            return Err(BadRequest::TextTooLong {
                chars,
                limit: MAX_QUERY_CHARS,
            }
            .into());
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct StartIndexing {
    folder: String,
}

async fn start_indexing(
    State(state): State<Shared>,
    body: Result<Json<StartIndexing>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(body) = body.map_err(|e| bad_request(e.body_text()))?;
    let status = blocking(&state, move |s| {
        s.indexing.start(&s.collection, &body.folder)
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}

async fn index_status(State(state): State<Shared>) -> Json<Value> {
    Json(serde_json::to_value(state.indexing.status()).unwrap_or_default())
}

async fn cancel_indexing(State(state): State<Shared>) -> Json<Value> {
    Json(serde_json::to_value(state.indexing.cancel()).unwrap_or_default())
}

async fn image(State(state): State<Shared>, Path(id): Path<u64>) -> ApiResult<Response> {
    let (bytes, mime) = blocking(&state, move |s| {
        files::full_image(
            &s.collection,
            id,
            read_roots(&s.collection, &s.settings).as_deref(),
        )
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, mime)], bytes).into_response())
}

async fn thumbnail(State(state): State<Shared>, Path(id): Path<u64>) -> ApiResult<Response> {
    let cached = blocking(&state, move |s| {
        files::cached_thumbnail(
            &s.collection,
            &s.thumbnails,
            id,
            read_roots(&s.collection, &s.settings).as_deref(),
        )
    })
    .await?;
    let bytes = match cached {
        Some(bytes) => bytes,
        None => {
            let permit = state.decodes.permit().await;
            blocking(&state, move |s| {
                let made = files::thumbnail(
                    &s.collection,
                    &s.thumbnails,
                    id,
                    &s.settings.load,
                    read_roots(&s.collection, &s.settings).as_deref(),
                );
                drop(permit);
                made
            })
            .await?
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        bytes,
    )
        .into_response())
}
