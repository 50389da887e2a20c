//! The routes of the orders service: an ordinary health check beside one durable route.

use cnerium::Engine;
use cnerium::warp::{durable_post, method_not_allowed, problem_rejections};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Reply;

use crate::orders::{CREATE_ORDER, create_order};

/// `GET /health` and `POST /orders`, with warp's own rejections answered as problems.
pub fn routes(engine: &Engine, service: &'static str) -> BoxedFilter<(warp::reply::Response,)> {
    let health_path = warp::path("health").and(warp::path::end());
    let health = health_path
        .and(warp::get().or(warp::head()).unify())
        .map(move || warp::reply::json(&serde_json::json!({"ok": true, "service": service})));
    let health_methods = health_path.map(|| method_not_allowed("GET, HEAD"));

    let orders = durable_post("orders", engine.route(CREATE_ORDER, create_order));

    health
        .map(Reply::into_response)
        .or(health_methods.map(Reply::into_response))
        .unify()
        .or(orders.map(Reply::into_response))
        .unify()
        .recover(|rejection| async move {
            problem_rejections(rejection)
                .await
                .map(Reply::into_response)
        })
        .unify()
        .boxed()
}
