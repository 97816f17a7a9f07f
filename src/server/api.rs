//! The JSON API's routes: each one parses its request, runs a [`crate::service`] call
//! on the blocking pool, and answers JSON (or an image).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{bad_request, not_found, ApiError};
use super::files;
use super::jobs::IndexStatus;
use super::{AppState, MAX_QUERY_CHARS, MAX_TEXTS_PER_REQUEST};
use crate::error::{BadRequest, Param};
use crate::pipeline::texts::{TextEntry, TextsSummary};
use crate::service::dups::{self, DupsFound, DupsRequest, DupsResponse};
use crate::service::explain::overlay::overlay_png;
use crate::service::explain::{ExplainImage, ExplainRequest, Explanation};
use crate::service::query::{like_term, split_weight, text_term, PhotoFilterText, Term, TermInput};
use crate::service::search::{
    first_photo, read_roots, search, Hit, QueryEcho, QueryInput, SearchRequest, SearchResponse,
};
use crate::service::{manage, texts};
use crate::Error;

type Shared = Arc<AppState>;
type ApiResult<T> = Result<T, ApiError>;

/// Most results one request may ask for (`k`), and deepest page (`offset`).
const MAX_K: usize = 1000;
const MAX_OFFSET: usize = 10_000;
/// Most terms one search may combine, the query included: each text is an embedding
/// and an ITM pass per reranked candidate, each photo a decode and an image encoding.
const MAX_TERMS: usize = 8;

/// Every route of the API, registered through its OpenAPI documentation (a route
/// cannot be added without it), and the document itself at `/api/openapi.json`.
pub(super) fn routes(max_upload_bytes: usize) -> OpenApiRouter<Shared> {
    let (schemas, paths, image_search) = routes!(search_indexed_image, search_uploaded_image);
    let image_search = image_search.layer(DefaultBodyLimit::max(max_upload_bytes));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(super::page))
        .routes(routes!(health))
        .routes(routes!(info))
        .routes(routes!(search_text, search_body))
        .routes((schemas, paths, image_search))
        .routes(routes!(duplicates))
        .routes(routes!(list_texts, add_texts))
        .routes(routes!(index_status, start_indexing, cancel_indexing))
        .routes(routes!(explain))
        .routes(routes!(image))
        .routes(routes!(thumbnail))
        .routes(routes!(openapi_document))
}

/// The document's frame: what every route shares.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "qseek",
        description = "Search a photo collection by a sentence, a photo or an indexed photo \
            (BLIP-2 retrieval). Every route first passes the server's edge: a `Host` the \
            server does not answer for gets 421, a cross-site request 403, a body over its \
            limit 413, a missing or wrong token 401 (`Authorization: Bearer TOKEN`, or the \
            session cookie the page's `/?token=` sets). Errors are `ErrorBody` documents."
    ),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// The OpenAPI document of this API (as generated from its routes and types).
#[utoipa::path(get, path = "/api/openapi.json", tag = "server",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_document() -> Json<utoipa::openapi::OpenApi> {
    Json(OPENAPI.clone())
}

/// The document, built once.
static OPENAPI: std::sync::LazyLock<utoipa::openapi::OpenApi> =
    std::sync::LazyLock::new(|| routes(0).split_for_parts().1);

/// An error, as every route answers it.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The error inside an [`ErrorBody`].
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Whose fault, e.g. `bad_request`, `not_found`, `too_large`, `forbidden`, `busy`.
    pub kind: String,
    /// In words.
    pub message: String,
    /// The error's data (e.g. which parameter, what it must be), or null.
    #[schema(value_type = Object)]
    pub detail: Value,
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

/// `{"status": "ok"}`.
#[derive(Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    status: &'static str,
}

/// Whether the server is up.
#[utoipa::path(get, path = "/api/health", tag = "server",
    responses((status = 200, description = "The server is up", body = Health)))]
async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// What the index holds (as `qseek info --json`), and the indexing run's status.
#[derive(Serialize, ToSchema)]
struct InfoDocument {
    #[serde(flatten)]
    info: manage::Info,
    /// The current or last indexing run.
    indexing: IndexStatus,
}

/// What the index holds, and where indexing is.
#[utoipa::path(get, path = "/api/info", tag = "collection",
    responses((status = 200, description = "The index's counts and sizes", body = InfoDocument)))]
async fn info(State(state): State<Shared>) -> ApiResult<Json<InfoDocument>> {
    let info = blocking(&state, |s| {
        Ok(manage::info(&s.collection.index, s.collection.index.path()))
    })
    .await?;
    Ok(Json(InfoDocument {
        info,
        indexing: state.indexing.status(),
    }))
}

/// Query parameters of `GET /api/duplicates`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DuplicatesQuery {
    /// Near-duplicates at or above this symmetric Chamfer similarity, above 0 and at
    /// most 1 (default 0.95).
    threshold: Option<f32>,
    /// Only photos whose path is under this folder (a filter: never opened).
    under: Option<String>,
    /// Groups skipped first (paging), at most 10 000.
    offset: Option<usize>,
    /// Groups wanted, 1 to 1000 (default 20).
    limit: Option<usize>,
    /// Also answer the similarity distribution (`scores`), to calibrate the threshold.
    scores: Option<bool>,
}

/// A scan the server keeps for the next pages: valid while the index is at the same
/// commit and the same threshold and folder are asked for.
pub(super) struct DupsCache {
    generation: u64,
    request: DupsRequest,
    found: Arc<DupsFound>,
}

/// A duplicate group's photo, with where to get it.
#[derive(Serialize, ToSchema)]
struct ServedDupMember {
    #[serde(flatten)]
    member: dups::DupMember,
    /// The photo's JPEG thumbnail.
    thumbnail_url: String,
    /// The photo itself.
    image_url: String,
}

/// A group of near-duplicates (or one photo at several paths), best first.
#[derive(Serialize, ToSchema)]
struct ServedDupGroup {
    /// Best first: the most pixels, then the newest date taken, then the path.
    members: Vec<ServedDupMember>,
}

/// One page of near-duplicate groups (as `qseek dups --json`, with URLs).
#[derive(Serialize, ToSchema)]
struct ServedDuplicates {
    /// The threshold used.
    threshold: f32,
    /// Photos scanned.
    images: usize,
    /// Whether every pair was scored, else the HNSW graph's candidates.
    exact: bool,
    /// Groups in all pages.
    total_groups: usize,
    /// Groups skipped before this page.
    offset: usize,
    /// This page's groups, in the order of their first photo's path.
    groups: Vec<ServedDupGroup>,
    /// The similarity distribution, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    scores: Option<dups::ScoreDistribution>,
}

impl From<DupsResponse> for ServedDuplicates {
    fn from(r: DupsResponse) -> Self {
        let groups = r
            .groups
            .into_iter()
            .map(|g| ServedDupGroup {
                members: g
                    .members
                    .into_iter()
                    .map(|member| ServedDupMember {
                        thumbnail_url: format!("/api/images/{}/thumbnail", member.image_id),
                        image_url: format!("/api/images/{}", member.image_id),
                        member,
                    })
                    .collect(),
            })
            .collect();
        ServedDuplicates {
            threshold: r.threshold,
            images: r.images,
            exact: r.exact,
            total_groups: r.total_groups,
            offset: r.offset,
            groups,
            scores: r.scores,
        }
    }
}

/// Groups of near-duplicate photos: bursts, resized, re-encoded, cropped or lightly
/// edited copies, every two photos of a group at least `threshold` alike, each group
/// best first (the most pixels, then the newest date, then the path) with each photo's
/// similarity to the first. A photo stored at several paths is a group too. Paged; the
/// scan is kept for the next pages until the index changes. Nothing is ever deleted.
#[utoipa::path(get, path = "/api/duplicates", tag = "collection", params(DuplicatesQuery),
    responses(
        (status = 200, description = "One page of groups", body = ServedDuplicates),
        (status = 400, description = "A parameter out of range", body = ErrorBody)))]
async fn duplicates(
    State(state): State<Shared>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<ServedDuplicates>> {
    let q: DuplicatesQuery = serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| bad_request(format!("query parameters: {e}")))?;
    let offset = q.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(BadRequest::OutOfRange {
            param: Param::Offset,
            expected: "at most 10000",
        }
        .into());
    }
    let limit = q.limit.unwrap_or(20);
    if !(1..=MAX_K).contains(&limit) {
        return Err(BadRequest::OutOfRange {
            param: Param::Limit,
            expected: "between 1 and 1000",
        }
        .into());
    }
    let request = DupsRequest {
        threshold: Some(dups::threshold(q.threshold)?),
        // A filter only: compared with indexed paths, never opened.
        under: q.under.filter(|u| !u.is_empty()).map(Into::into),
    };
    let scores = q.scores.unwrap_or(false);
    let page = blocking(&state, move |s| {
        let index = &s.collection.index;
        let generation = index.stats().generation;
        let cached = s
            .dups
            .lock()
            .expect("dups cache lock")
            .as_ref()
            .filter(|c| c.generation == generation && c.request == request)
            .map(|c| c.found.clone());
        let found = match cached {
            Some(found) => found,
            None => {
                let found = Arc::new(dups::find(index, &request)?);
                *s.dups.lock().expect("dups cache lock") = Some(DupsCache {
                    generation,
                    request,
                    found: found.clone(),
                });
                found
            }
        };
        dups::page(&found, offset, Some(limit), scores)
    })
    .await?;
    Ok(Json(page.into()))
}

/// Query parameters of the search routes (and the keys of `POST /api/search`'s body).
#[derive(Debug, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
struct SearchQuery {
    /// The sentence (`GET /api/search`), at most 1000 characters.
    q: Option<String>,
    /// The indexed image to search by (`GET /api/search/image`).
    id: Option<u64>,
    /// With an image: find texts instead of images.
    texts: Option<bool>,
    /// Results wanted, 1 to 1000 (default 10).
    k: Option<usize>,
    /// Results skipped first (paging), at most 10 000.
    offset: Option<usize>,
    /// Candidates rescored by ITM, at most 256 (default 16 with stored vision features,
    /// else 0).
    rerank: Option<usize>,
    /// Drop results whose ITM match probability is below this (needs rerank).
    min_prob: Option<f32>,
    /// Only images whose path is under this folder (a filter: never opened).
    under: Option<String>,
    /// Only photos taken on or after this date: `2023`, `2023-06`, `2023-06-14` or RFC
    /// 3339 (in the photo's local time when it has no offset).
    after: Option<String>,
    /// Only photos taken on or before this date (to its end: `2023` keeps all of 2023).
    before: Option<String>,
    /// Only photos whose camera's make and model contain this (ignoring case).
    camera: Option<String>,
    /// `LAT,LON[,KM]`: only photos taken within KM kilometres (default 1) of a place.
    near: Option<String>,
    /// Only photos without a date taken.
    undated: Option<bool>,
    /// `score` (best first, the default) or `date` (oldest first).
    sort: Option<String>,
    /// Walk the HNSW graph instead of scoring every image exactly.
    ann: Option<bool>,
    /// Another sentence the photos should match too (repeatable), with an optional
    /// weight: `also=2:sunset`.
    #[serde(default)]
    also: Vec<String>,
    /// An indexed photo the results should look like (repeatable), by id, with an
    /// optional weight: `like=0.5:12`.
    #[serde(default)]
    like: Vec<String>,
    /// A sentence the photos must not match (repeatable): its ITC subtracts, and a
    /// reranked photo whose ITM match probability for it reaches `not_prob` is dropped.
    #[serde(default)]
    not: Vec<String>,
    /// The probability for a `not` sentence at which a photo is dropped (default 0.5).
    not_prob: Option<f32>,
}

/// The repeatable parameters of [`SearchQuery`]: `serde_urlencoded` reads no
/// sequences, so they are taken out of the query string first.
const REPEATED: [&str; 3] = ["also", "like", "not"];

impl SearchQuery {
    /// The extra terms: `also`, `like` and `not`.
    fn terms(&self) -> ApiResult<Vec<Term>> {
        let mut terms = Vec::new();
        for also in &self.also {
            terms.push(text_term("also", also, false)?);
        }
        for like in &self.like {
            terms.push(like_term("like", like, true)?);
        }
        for not in &self.not {
            terms.push(text_term("not", not, true)?);
        }
        Ok(terms)
    }

    fn request(
        &self,
        query: QueryInput,
        weight: f32,
        terms: Vec<Term>,
    ) -> ApiResult<SearchRequest> {
        if terms.len() + 1 > MAX_TERMS {
            return Err(BadRequest::OutOfRange {
                param: Param::Terms,
                expected: "at most 8, the query included",
            }
            .into());
        }
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
            photo: PhotoFilterText {
                after: self.after.clone(),
                before: self.before.clone(),
                camera: self.camera.clone(),
                near: self.near.clone(),
                undated: self.undated.unwrap_or(false),
            }
            .parse()?,
            sort: self.sort.as_deref().unwrap_or("score").parse()?,
            ann: self.ann.unwrap_or(false),
            weight,
            terms,
            not_prob: self.not_prob,
        })
    }
}

/// The search parameters of a query string, the repeatable ones included.
fn query_params(raw: Option<String>) -> ApiResult<SearchQuery> {
    let raw = raw.unwrap_or_default();
    let mut rest = form_urlencoded::Serializer::new(String::new());
    let mut repeated: [Vec<String>; 3] = Default::default();
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        match REPEATED.iter().position(|r| *r == key) {
            Some(i) => repeated[i].push(value.into_owned()),
            None => {
                rest.append_pair(&key, &value);
            }
        }
    }
    let mut q: SearchQuery = serde_urlencoded::from_str(&rest.finish())
        .map_err(|e| bad_request(format!("query parameters: {e}")))?;
    [q.also, q.like, q.not] = repeated;
    Ok(q)
}

/// The document `qseek search --json` prints, each image result with its URLs.
#[derive(Serialize, ToSchema)]
struct ServedSearch {
    /// The query, with the defaults applied.
    query: QueryEcho,
    /// Best first.
    results: Vec<ServedHit>,
    /// What the user should know about the results.
    notes: Vec<String>,
}

/// A result, and for an image where to get it.
#[derive(Serialize, ToSchema)]
struct ServedHit {
    #[serde(flatten)]
    hit: Hit,
    /// The image's JPEG thumbnail (image results only).
    #[serde(skip_serializing_if = "Option::is_none")]
    thumbnail_url: Option<String>,
    /// The image itself (image results only).
    #[serde(skip_serializing_if = "Option::is_none")]
    image_url: Option<String>,
}

/// The search document, with each image result's URLs added.
fn served(response: SearchResponse) -> Json<ServedSearch> {
    let results = response
        .results
        .into_iter()
        .map(|hit| ServedHit {
            thumbnail_url: hit.image_id.map(|id| format!("/api/images/{id}/thumbnail")),
            image_url: hit.image_id.map(|id| format!("/api/images/{id}")),
            hit,
        })
        .collect();
    Json(ServedSearch {
        query: response.query,
        results,
        notes: response.notes,
    })
}

async fn run_search(state: &Shared, req: SearchRequest) -> ApiResult<Json<ServedSearch>> {
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

/// Photos for a sentence.
#[utoipa::path(get, path = "/api/search", tag = "search", params(SearchQuery),
    responses((status = 200, description = "The results", body = ServedSearch), (status = 400, description = "A bad request", body = ErrorBody)))]
async fn search_text(
    State(state): State<Shared>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<ServedSearch>> {
    let q = query_params(raw)?;
    let mut terms = q.terms()?;
    let (query, weight) = match q.q.as_deref().filter(|q| !q.trim().is_empty()) {
        Some(text) => {
            let (weight, text) = split_weight("q", text)?;
            (QueryInput::Text(text.to_string()), weight)
        }
        // Photos alone (`like=`): the first is the query.
        None => first_photo(&mut terms).unwrap_or((QueryInput::Text(String::new()), 1.0)),
    };
    let req = q.request(query, weight, terms)?;
    run_search(&state, req).await
}

/// A term of a [`SearchBody`]: a sentence or an indexed photo, with its weight.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BodyTerm {
    /// A sentence.
    text: Option<String>,
    /// Or an indexed photo, by id.
    image_id: Option<u64>,
    /// Its weight (default 1; negative subtracts).
    weight: Option<f32>,
}

/// `POST /api/search`: the query as JSON. The other keys are the query parameters of
/// `GET /api/search` (the filters, `k`, `rerank`, `min_prob`, `not`, `not_prob`,
/// `offset`, ...), with the same meaning; the terms replace `q`, `also` and `like`.
#[derive(Debug, Deserialize, ToSchema)]
struct SearchBody {
    /// The terms the photos should match, the first one the query.
    terms: Vec<BodyTerm>,
    /// Everything else, as `GET /api/search` names it.
    #[serde(flatten)]
    #[schema(inline)]
    params: SearchQuery,
}

/// Photos for a combined query sent as JSON: weighted sentences and photos, sentences
/// to avoid, and the filters.
#[utoipa::path(post, path = "/api/search", tag = "search", request_body = SearchBody,
    responses((status = 200, description = "The results", body = ServedSearch), (status = 400, description = "A bad request", body = ErrorBody)))]
async fn search_body(
    State(state): State<Shared>,
    body: Result<Json<SearchBody>, JsonRejection>,
) -> ApiResult<Json<ServedSearch>> {
    let Json(body) = body.map_err(|e| bad_request(e.body_text()))?;
    let mut terms = Vec::new();
    for (i, t) in body.terms.into_iter().enumerate() {
        let weight = t.weight.unwrap_or(1.0);
        if !weight.is_finite() || weight == 0.0 {
            return Err(bad_request(format!(
                "terms[{i}]: the weight must be a number other than 0"
            )));
        }
        let input = match (t.text, t.image_id) {
            (Some(text), None) => TermInput::Text(text),
            (None, Some(id)) => TermInput::IndexedImage(id),
            _ => {
                return Err(bad_request(format!(
                    "terms[{i}]: give a text or an image_id, not both"
                )))
            }
        };
        terms.push(Term { input, weight });
    }
    let q = body.params;
    if q.q.is_some() || q.id.is_some() || !q.also.is_empty() || !q.like.is_empty() {
        return Err(bad_request(
            "a JSON search gives its sentences and photos as terms: not q, id, also or like",
        ));
    }
    for not in &q.not {
        terms.push(text_term("not", not, true)?);
    }
    if terms.is_empty() {
        return Err(BadRequest::EmptyQuery.into());
    }
    let first = terms.remove(0);
    let req = q.request(first.input.into(), first.weight, terms)?;
    run_search(&state, req).await
}

/// Photos like an indexed photo (`id`), or texts for it (`texts=true`).
#[utoipa::path(get, path = "/api/search/image", tag = "search", params(SearchQuery),
    responses((status = 200, description = "The results", body = ServedSearch), (status = 400, description = "A bad request", body = ErrorBody),
        (status = 404, description = "No image with that id", body = ErrorBody)))]
async fn search_indexed_image(
    State(state): State<Shared>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<ServedSearch>> {
    let q = query_params(raw)?;
    let id =
        q.id.ok_or_else(|| bad_request("give the image's id: ?id=IMAGE_ID"))?;
    let req = q.request(QueryInput::IndexedImage(id), 1.0, q.terms()?)?;
    run_search(&state, req).await
}

/// Photos like an uploaded photo, or texts for it (`texts=true`). The image is the raw
/// body, or the first file field of a multipart form. The upload is admitted before its
/// body is read (or refused with 503: [`super::limits`]).
#[utoipa::path(post, path = "/api/search/image", tag = "search", params(SearchQuery),
    request_body(description = "The image (JPEG, PNG, WebP, GIF, BMP or TIFF): the raw body, or a multipart form's file field",
        content((Vec<u8> = "application/octet-stream"), (Vec<u8> = "multipart/form-data"))),
    responses((status = 200, description = "The results", body = ServedSearch), (status = 400, description = "A bad request", body = ErrorBody),
        (status = 413, description = "The upload or its pixels over the limit", body = ErrorBody),
        (status = 415, description = "Not an image qseek reads", body = ErrorBody),
        (status = 503, description = "Too many decodes waiting: retry after `Retry-After`", body = ErrorBody)))]
async fn search_uploaded_image(
    State(state): State<Shared>,
    RawQuery(raw): RawQuery,
    request: Request,
) -> ApiResult<Json<ServedSearch>> {
    let q = query_params(raw)?;
    let _admission = state.decodes.admit()?;
    let bytes = upload(&state, request).await?;
    if bytes.is_empty() {
        return Err(bad_request("the upload is empty: send an image"));
    }
    let req = q.request(QueryInput::ImageBytes(bytes), 1.0, q.terms()?)?;
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

/// The index's texts.
#[derive(Serialize, ToSchema)]
struct TextList {
    /// Every text, in id order.
    texts: Vec<texts::TextItem>,
}

/// The texts image → texts searches find.
#[utoipa::path(get, path = "/api/texts", tag = "collection",
    responses((status = 200, description = "Every text", body = TextList)))]
async fn list_texts(State(state): State<Shared>) -> ApiResult<Json<TextList>> {
    let texts = blocking(&state, |s| Ok(texts::list(&s.collection.index))).await?;
    Ok(Json(TextList { texts }))
}

/// Texts to add.
#[derive(Deserialize, ToSchema)]
struct AddTexts {
    /// At most 1000, each at most 1000 characters.
    texts: Vec<TextEntry>,
}

/// Adds texts (embedded now).
#[utoipa::path(post, path = "/api/texts", tag = "collection", request_body = AddTexts,
    responses((status = 200, description = "What was added", body = TextsSummary), (status = 400, description = "A bad request", body = ErrorBody),
        (status = 413, description = "More texts than a request takes", body = ErrorBody)))]
async fn add_texts(
    State(state): State<Shared>,
    body: Result<Json<AddTexts>, JsonRejection>,
) -> ApiResult<Json<TextsSummary>> {
    let Json(body) = body.map_err(|e| bad_request(e.body_text()))?;
    check_texts(&body.texts)?;
    let summary = blocking(&state, move |s| {
        texts::add(&s.collection, "request", &body.texts, s.batch, false)
    })
    .await?;
    Ok(Json(summary))
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

/// A folder to index.
#[derive(Deserialize, ToSchema)]
struct StartIndexing {
    /// Absolute: under an `--allow` folder or a folder `qseek index` was given.
    folder: String,
}

/// Starts indexing a folder (one run at a time; searches go on meanwhile).
#[utoipa::path(post, path = "/api/index", tag = "indexing", request_body = StartIndexing,
    responses((status = 202, description = "Started", body = IndexStatus),
        (status = 400, description = "Not a folder this server may index", body = ErrorBody),
        (status = 409, description = "A run is already going on", body = ErrorBody)))]
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

/// Where the current (or last) indexing run is.
#[utoipa::path(get, path = "/api/index", tag = "indexing",
    responses((status = 200, description = "Its progress", body = IndexStatus)))]
async fn index_status(State(state): State<Shared>) -> Json<IndexStatus> {
    Json(state.indexing.status())
}

/// Stops the run after its current batch (what it did stays committed).
#[utoipa::path(delete, path = "/api/index", tag = "indexing",
    responses((status = 200, description = "Its progress", body = IndexStatus)))]
async fn cancel_indexing(State(state): State<Shared>) -> Json<IndexStatus> {
    Json(state.indexing.cancel())
}

/// Query parameters of `GET /api/explain`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ExplainQuery {
    /// The indexed photo.
    id: u64,
    /// The sentence, at most 1000 characters.
    q: Option<String>,
    /// Another sentence of the query (repeatable), with an optional weight: each has its
    /// own map.
    #[serde(default)]
    also: Vec<String>,
    /// A sentence the photo must not match (repeatable): its map shows where it would.
    #[serde(default)]
    not: Vec<String>,
    /// The Q-Former layer whose cross-attention the maps read (default: the one nearest
    /// the middle, 6 for BLIP-2).
    layer: Option<usize>,
    /// `json` (the default) or `png`: the photo with one term's map blended over it.
    format: Option<String>,
    /// With `format=png`: which term's map, 0 for `q` (the default), then `also`, then
    /// `not`, in their order.
    term: Option<usize>,
}

/// The parameters of `GET /api/explain`, the repeatable `also` and `not` included.
fn explain_params(raw: Option<String>) -> ApiResult<ExplainQuery> {
    let raw = raw.unwrap_or_default();
    let mut rest = form_urlencoded::Serializer::new(String::new());
    let (mut also, mut not) = (Vec::new(), Vec::new());
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        match &*key {
            "also" => also.push(value.into_owned()),
            "not" => not.push(value.into_owned()),
            _ => {
                rest.append_pair(&key, &value);
            }
        }
    }
    let mut q: ExplainQuery = serde_urlencoded::from_str(&rest.finish())
        .map_err(|e| bad_request(format!("query parameters: {e}")))?;
    (q.also, q.not) = (also, not);
    Ok(q)
}

/// Why an indexed photo matches a sentence: for each text term (`q`, `also`, `not`),
/// the query vector that gave the ITC max and the runner-up, the ITM logit, and the
/// Grad-CAM heat map of the ITM head's cross-attention over the ViT's patch grid; with
/// `format=png`, the photo with a map blended over it. Uses the photo's stored vision
/// features when the index holds them; costs about a second per sentence on 2 cores
/// for BLIP-2 (ViT-g).
#[utoipa::path(get, path = "/api/explain", tag = "search", params(ExplainQuery),
    responses((status = 200, description = "The explanation (or, with format=png, the overlay as image/png)", body = Explanation),
        (status = 400, description = "A bad request", body = ErrorBody),
        (status = 404, description = "No such image", body = ErrorBody)))]
async fn explain(State(state): State<Shared>, RawQuery(raw): RawQuery) -> ApiResult<Response> {
    let q = explain_params(raw)?;
    let (also, not) = (&q.also, &q.not);
    let png = match q.format.as_deref().unwrap_or("json") {
        "json" => false,
        "png" => true,
        other => return Err(bad_request(format!("format {other:?}: use json or png"))),
    };
    let mut terms = Vec::new();
    if let Some(text) = q.q.as_deref().filter(|t| !t.trim().is_empty()) {
        terms.push(text_term("q", text, false)?);
    }
    for a in also {
        terms.push(text_term("also", a, false)?);
    }
    for n in not {
        terms.push(text_term("not", n, true)?);
    }
    if terms.is_empty() {
        return Err(BadRequest::EmptyQuery.into());
    }
    if terms.len() > MAX_TERMS {
        return Err(BadRequest::OutOfRange {
            param: Param::Terms,
            expected: "at most 8",
        }
        .into());
    }
    for t in &terms {
        if let TermInput::Text(text) = &t.input {
            let chars = text.chars().count();
            if chars > MAX_QUERY_CHARS {
                return Err(BadRequest::QueryTooLong {
                    chars,
                    limit: MAX_QUERY_CHARS,
                }
                .into());
            }
        }
    }
    let term = q.term.unwrap_or(0);
    if term >= terms.len() {
        return Err(bad_request(format!(
            "term {term}: the query has {} sentences (0 is q)",
            terms.len()
        )));
    }
    let req = ExplainRequest {
        terms,
        layer: q.layer,
    };
    // An explanation is seconds of model work and may decode the photo: it waits for a
    // decode permit, so that a burst of them queues instead of taking every core.
    let permit = state.decodes.permit().await;
    let answer = blocking(&state, move |s| {
        let c = &s.collection;
        let image = ExplainImage::indexed(c, &s.settings, q.id, png)?;
        let explanation = crate::service::explain::explain(&c.embedder, &s.model, &image, &req)?;
        let overlay = match (png, &image.photo) {
            (true, Some(photo)) => {
                let map: Vec<f32> = explanation.terms[term]
                    .heat
                    .iter()
                    .flatten()
                    .copied()
                    .collect();
                Some(overlay_png(photo, &map, explanation.grid)?)
            }
            _ => None,
        };
        drop(permit);
        Ok((explanation, overlay))
    })
    .await?;
    Ok(match answer {
        (_, Some(png)) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        (explanation, None) => Json(explanation).into_response(),
    })
}

/// An indexed photo's file, as it is on disk.
#[utoipa::path(get, path = "/api/images/{id}", tag = "images",
    params(("id" = u64, Path, description = "The image's id")),
    responses((status = 200, description = "The file (its own image type)", content_type = "image/*"),
        (status = 403, description = "Its file now lies outside the collection", body = ErrorBody),
        (status = 404, description = "No such image, or its file is gone", body = ErrorBody)))]
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

/// An indexed photo's JPEG thumbnail (320 px on its longer side), made once.
#[utoipa::path(get, path = "/api/images/{id}/thumbnail", tag = "images",
    params(("id" = u64, Path, description = "The image's id")),
    responses((status = 200, description = "The thumbnail", content_type = "image/jpeg"),
        (status = 403, description = "Its file now lies outside the collection", body = ErrorBody),
        (status = 404, description = "No such image, or its file is gone", body = ErrorBody)))]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the router has, by method: the document names each one (the router
    /// is built from the documented handlers, so a new route must be added here too).
    #[test]
    fn the_document_names_every_route_of_the_router() {
        let expected = [
            ("/", "get"),
            ("/api/health", "get"),
            ("/api/info", "get"),
            ("/api/duplicates", "get"),
            ("/api/search", "get"),
            ("/api/search", "post"),
            ("/api/search/image", "get"),
            ("/api/search/image", "post"),
            ("/api/texts", "get"),
            ("/api/texts", "post"),
            ("/api/index", "get"),
            ("/api/index", "post"),
            ("/api/index", "delete"),
            ("/api/explain", "get"),
            ("/api/images/{id}", "get"),
            ("/api/images/{id}/thumbnail", "get"),
            ("/api/openapi.json", "get"),
        ];
        let doc = serde_json::to_value(&*OPENAPI).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
        let mut documented: Vec<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
                    .map(move |m| (path.clone(), m.clone()))
            })
            .collect();
        documented.sort();
        let mut expected: Vec<(String, String)> = expected
            .iter()
            .map(|(p, m)| (p.to_string(), m.to_string()))
            .collect();
        expected.sort();
        assert_eq!(documented, expected);
        // And no route joins the router without its documentation (a plain route call on the
        // router adds one the document does not know).
        let undocumented = concat!(".rou", "te(");
        for (file, source) in [
            ("api.rs", include_str!("api.rs")),
            ("mod.rs", include_str!("mod.rs")),
        ] {
            assert!(
                !source.contains(undocumented),
                "{file} adds a route outside `routes!`"
            );
        }
        // Each operation says what it answers, and the schemas it names exist.
        let text = doc.to_string();
        for schema in [
            "ServedSearch",
            "ErrorBody",
            "IndexStatus",
            "InfoDocument",
            "TextsSummary",
            "ServedDuplicates",
            "Explanation",
        ] {
            assert!(
                doc["components"]["schemas"][schema].is_object(),
                "{schema}: {text}"
            );
        }
    }
}
