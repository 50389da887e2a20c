//! The routes of the orders service on tide: an ordinary health check beside one durable
//! route, with tide's own routing failures answered as problems.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cnerium::Engine;
use cnerium::tide::tide::{self, Body, Middleware, Next, Request, Response, StatusCode};
use cnerium::tide::{RouterProblems, durable, method_not_allowed, method_not_allowed_allowing};

use crate::orders::{CREATE_ORDER, create_order};

/// `GET /health` and `POST /orders`; other methods on `/orders` and unknown paths are
/// problems, as on the warp service. `in_flight` counts the requests being answered.
pub fn app(engine: &Engine, service: &'static str, in_flight: InFlight) -> tide::Server<()> {
    let mut app = tide::new();
    app.with(in_flight);
    app.with(RouterProblems);
    let health = move |_request: Request<()>| async move {
        let body = Body::from_json(&serde_json::json!({"ok": true, "service": service}))?;
        let mut response = Response::new(StatusCode::Ok);
        response.set_body(body);
        Ok(response)
    };
    app.at("/health")
        .get(health)
        .head(health)
        .all(method_not_allowed_allowing("GET, HEAD"));
    app.at("/orders")
        .post(durable(engine.route(CREATE_ORDER, create_order)))
        .all(method_not_allowed());
    app
}

/// Counts the requests being answered, so that a stopping service can let them finish.
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
}

impl InFlight {
    /// How many requests are being answered now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// Takes one off the count when the request's answer is done or its task is dropped.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tide::utils::async_trait]
impl Middleware<()> for InFlight {
    async fn handle(&self, request: Request<()>, next: Next<'_, ()>) -> tide::Result {
        self.count.fetch_add(1, Ordering::SeqCst);
        let _counted = Counted(self.count.clone());
        Ok(next.run(request).await)
    }
}
