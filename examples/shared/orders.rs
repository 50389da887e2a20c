//! The order handler both orders services run, whatever their web framework: the same
//! validation, the same response bytes and the same `order.created` event.
//!
//! Its steps are public, so that a route without the engine (the plain route of the HTTP
//! benchmark) runs the same code as the durable one.

use bytes::Bytes;
use cnerium::{DurableRequest, DurableResponse, EmitError, Event, Timestamp};
use http::Response;
use serde::Serialize;
use serde_json::Value;

/// Operation name of `POST /orders`; keys are scoped by it.
pub const CREATE_ORDER: &str = "orders.create";

/// An order request that passed validation, borrowing from the parsed body.
pub struct Order<'a> {
    product_id: &'a str,
    quantity: u64,
}

#[derive(Serialize)]
struct OrderCreated<'a> {
    ok: bool,
    order_id: &'a str,
    product_id: &'a str,
    quantity: u64,
}

/// The payload of the `order.created` event.
#[derive(Serialize)]
pub struct OrderEvent<'a> {
    order_id: &'a str,
    product_id: &'a str,
    quantity: u64,
}

/// Why an order request was refused: the detail of its 400 answer.
pub struct Refused(&'static str);

impl Refused {
    /// The 400 answer.
    pub fn response(&self) -> DurableResponse {
        DurableResponse::bad_request(self.0)
    }
}

/// Parses a request body as JSON.
pub fn parse_body(body: &[u8]) -> Result<Value, Refused> {
    serde_json::from_slice(body).map_err(|_| Refused("Request body must be a JSON object"))
}

/// The id of the order created under idempotency key `key`.
pub fn order_id(key: &str) -> String {
    format!("ord_{key}")
}

impl<'a> Order<'a> {
    /// Checks `product_id` and `quantity`.
    pub fn validate(body: &'a Value) -> Result<Self, Refused> {
        let product_id = match body.get("product_id") {
            Some(Value::String(id)) if !id.is_empty() => id.as_str(),
            _ => {
                return Err(Refused("Missing required field: product_id"));
            }
        };
        let quantity = match body.get("quantity").and_then(Value::as_u64) {
            Some(quantity) if quantity > 0 => quantity,
            _ => {
                return Err(Refused("Field quantity must be greater than zero"));
            }
        };
        Ok(Self {
            product_id,
            quantity,
        })
    }

    /// The payload of the `order.created` event for this order.
    pub fn event<'b>(&'b self, order_id: &'b str) -> OrderEvent<'b> {
        OrderEvent {
            order_id,
            product_id: self.product_id,
            quantity: self.quantity,
        }
    }

    /// The 201 answer for this order.
    pub fn created(&self, order_id: &str) -> DurableResponse {
        DurableResponse::created(OrderCreated {
            ok: true,
            order_id,
            product_id: self.product_id,
            quantity: self.quantity,
        })
    }
}

/// Creates an order once per idempotency key and tells every connected client.
pub async fn create_order(request: DurableRequest) -> Result<DurableResponse, EmitError> {
    let body = match parse_body(request.body()) {
        Ok(body) => body,
        Err(refused) => return Ok(refused.response()),
    };
    let order = match Order::validate(&body) {
        Ok(order) => order,
        Err(refused) => return Ok(refused.response()),
    };

    let order_id = order_id(request.idempotency_key().as_str());
    request.emit("order.created", order.event(&order_id))?;
    Ok(order.created(&order_id))
}

/// The same steps without the engine, as a plain route runs them: validate, publish the
/// event through `publish` at once, answer. A retry creates the order again.
// The services include this file too and have no plain route.
#[allow(dead_code)]
pub fn create_order_without_engine(
    key: &str,
    body: &[u8],
    now: Timestamp,
    publish: impl FnOnce(&Event),
) -> Response<Bytes> {
    let value = match parse_body(body) {
        Ok(value) => value,
        Err(refused) => return refused.response().into_http(),
    };
    let order = match Order::validate(&value) {
        Ok(order) => order,
        Err(refused) => return refused.response().into_http(),
    };
    let order_id = order_id(key);
    if let Ok(event) = Event::new("order.created", None, order.event(&order_id), now) {
        publish(&event);
    }
    order.created(&order_id).into_http()
}
