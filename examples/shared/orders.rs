//! The order handler both orders services run, whatever their web framework: the same
//! validation, the same response bytes and the same `order.created` event.

use cnerium::{DurableRequest, DurableResponse, EmitError};
use serde::Serialize;
use serde_json::Value;

/// Operation name of `POST /orders`; keys are scoped by it.
pub const CREATE_ORDER: &str = "orders.create";

#[derive(Serialize)]
struct OrderCreated<'a> {
    ok: bool,
    order_id: &'a str,
    product_id: &'a str,
    quantity: u64,
}

#[derive(Serialize)]
struct OrderEvent<'a> {
    order_id: &'a str,
    product_id: &'a str,
    quantity: u64,
}

/// Creates an order once per idempotency key and tells every connected client.
pub async fn create_order(request: DurableRequest) -> Result<DurableResponse, EmitError> {
    let Ok(body) = request.json() else {
        return Ok(DurableResponse::bad_request(
            "Request body must be a JSON object",
        ));
    };
    let product_id = match body.get("product_id") {
        Some(Value::String(id)) if !id.is_empty() => id.as_str(),
        _ => {
            return Ok(DurableResponse::bad_request(
                "Missing required field: product_id",
            ));
        }
    };
    let quantity = match body.get("quantity").and_then(Value::as_u64) {
        Some(quantity) if quantity > 0 => quantity,
        _ => {
            return Ok(DurableResponse::bad_request(
                "Field quantity must be greater than zero",
            ));
        }
    };

    let order_id = format!("ord_{}", request.idempotency_key());
    request.emit(
        "order.created",
        OrderEvent {
            order_id: &order_id,
            product_id,
            quantity,
        },
    )?;
    Ok(DurableResponse::created(OrderCreated {
        ok: true,
        order_id: &order_id,
        product_id,
        quantity,
    }))
}
