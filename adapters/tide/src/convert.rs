//! Conversion between tide's `http-types` 2.x and the `http` 1.x types the engine speaks.
//!
//! Both directions keep every header value, repeated names included, in the order each
//! name's values arrived. What one side can say and the other cannot is an error, never a
//! silent loss.

use std::fmt;

use bytes::Bytes;
use tide::http as ht;

/// A tide request head that cannot be expressed with the `http` crate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestConversionError {
    /// The method is not a valid HTTP token.
    Method(String),
    /// The path and query do not form a valid request target.
    Target(String),
    /// A header name is not a valid HTTP token.
    HeaderName(String),
    /// A header value holds bytes the `http` crate refuses (control characters).
    HeaderValue {
        /// The header's name.
        name: String,
    },
}

impl fmt::Display for RequestConversionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Method(method) => write!(f, "method {method:?} is not a valid token"),
            Self::Target(target) => write!(f, "request target {target:?} is not a valid URI"),
            Self::HeaderName(name) => write!(f, "header name {name:?} is not a valid token"),
            Self::HeaderValue { name } => write!(f, "the value of header {name} is not valid"),
        }
    }
}

impl std::error::Error for RequestConversionError {}

/// An `http` response that tide 0.16 cannot send.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseConversionError {
    /// `http-types` 2.x names a fixed set of statuses; this one is not among them.
    Status(u16),
    /// `http-types` 2.x header values are ASCII; this one holds other bytes.
    HeaderValue {
        /// The header's name.
        name: String,
    },
}

impl fmt::Display for ResponseConversionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(status) => write!(f, "tide cannot send status {status}"),
            Self::HeaderValue { name } => {
                write!(
                    f,
                    "the value of header {name} is not ASCII, which tide cannot send"
                )
            }
        }
    }
}

impl std::error::Error for ResponseConversionError {}

/// The head of a tide request as `http` request parts: method, path and query (the
/// origin form, without scheme and host), version and every header value.
///
/// The extensions are empty; tide's own request extensions are typed by tide and stay
/// there.
pub fn request_parts<State>(
    request: &tide::Request<State>,
) -> Result<http::request::Parts, RequestConversionError> {
    let method = request.method().to_string();
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| RequestConversionError::Method(method))?;

    let url = request.url();
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let uri = http::Uri::try_from(target.as_str())
        .map_err(|_| RequestConversionError::Target(target.clone()))?;

    let mut head = http::Request::new(());
    *head.method_mut() = method;
    *head.uri_mut() = uri;
    *head.version_mut() = version(request.version());
    let headers = head.headers_mut();
    for (name, values) in request.iter() {
        let name = http::HeaderName::from_bytes(name.as_str().as_bytes())
            .map_err(|_| RequestConversionError::HeaderName(name.as_str().to_owned()))?;
        for value in values {
            let value = http::HeaderValue::from_str(value.as_str()).map_err(|_| {
                RequestConversionError::HeaderValue {
                    name: name.as_str().to_owned(),
                }
            })?;
            headers.append(name.clone(), value);
        }
    }
    Ok(head.into_parts().0)
}

/// An `http` response as a tide response: the same status, every header value in order,
/// and the body byte for byte.
///
/// A response without `Content-Type` stays without one (tide would otherwise label the
/// body `application/octet-stream`).
pub fn tide_response(
    response: http::Response<Bytes>,
) -> Result<tide::Response, ResponseConversionError> {
    let (parts, body) = response.into_parts();
    let status = ht::StatusCode::try_from(parts.status.as_u16())
        .map_err(|_| ResponseConversionError::Status(parts.status.as_u16()))?;

    let mut converted = ht::Response::new(status);
    converted.set_body(ht::Body::from_bytes(Vec::from(body)));
    converted.remove_header(ht::headers::CONTENT_TYPE);
    for (name, value) in &parts.headers {
        let header_error = || ResponseConversionError::HeaderValue {
            name: name.as_str().to_owned(),
        };
        // Names from the `http` crate are lower-case tokens, so always ASCII.
        let ht_name = ht::headers::HeaderName::from_bytes(name.as_str().as_bytes().to_vec())
            .map_err(|_| header_error())?;
        let ht_value = ht::headers::HeaderValue::from_bytes(value.as_bytes().to_vec())
            .map_err(|_| header_error())?;
        converted.append_header(ht_name, ht_value);
    }
    Ok(converted.into())
}

fn version(version: Option<ht::Version>) -> http::Version {
    match version {
        Some(ht::Version::Http0_9) => http::Version::HTTP_09,
        Some(ht::Version::Http1_0) => http::Version::HTTP_10,
        Some(ht::Version::Http2_0) => http::Version::HTTP_2,
        Some(ht::Version::Http3_0) => http::Version::HTTP_3,
        // HTTP/1.1, tide's only server version, and any version added later.
        _ => http::Version::HTTP_11,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16) -> http::Response<Bytes> {
        let mut response = http::Response::new(Bytes::from_static(b"\x00\xffbody"));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        response
    }

    #[test]
    fn response_keeps_status_body_and_every_repeated_header_in_order() {
        let mut original = response(201);
        let headers = original.headers_mut();
        headers.append("set-cookie", "a=1".parse().unwrap());
        headers.append("set-cookie", "b=2; Path=/".parse().unwrap());
        headers.append("link", "</a>; rel=next".parse().unwrap());
        headers.append("link", "</b>; rel=prev".parse().unwrap());
        headers.append("content-type", "application/json".parse().unwrap());

        let mut converted: ht::Response = tide_response(original).unwrap().into();
        assert_eq!(converted.status(), ht::StatusCode::Created);
        let cookies: Vec<_> = converted["set-cookie"].iter().map(|v| v.as_str()).collect();
        assert_eq!(cookies, ["a=1", "b=2; Path=/"]);
        let links: Vec<_> = converted["link"].iter().map(|v| v.as_str()).collect();
        assert_eq!(links, ["</a>; rel=next", "</b>; rel=prev"]);
        assert_eq!(converted["content-type"], "application/json");

        let body = futures_util::FutureExt::now_or_never(converted.body_bytes())
            .expect("a body in memory is ready")
            .unwrap();
        assert_eq!(body, b"\x00\xffbody");
    }

    #[test]
    fn response_without_content_type_gets_none() {
        let converted: ht::Response = tide_response(response(204)).unwrap().into();
        assert!(converted.header("content-type").is_none());
    }

    #[test]
    fn status_http_types_does_not_name_is_an_error() {
        assert_eq!(
            tide_response(response(299)).unwrap_err(),
            ResponseConversionError::Status(299)
        );
    }

    #[test]
    fn non_ascii_header_value_is_an_error() {
        let mut original = response(200);
        let value = http::HeaderValue::from_bytes(b"caf\xe9").unwrap();
        original.headers_mut().insert("x-name", value);
        assert_eq!(
            tide_response(original).unwrap_err(),
            ResponseConversionError::HeaderValue {
                name: "x-name".into()
            }
        );
    }

    #[test]
    fn request_head_keeps_method_target_and_repeated_headers() {
        let url = ht::Url::parse("http://example.test/orders?a=1&b=2").unwrap();
        let mut inner = ht::Request::new(ht::Method::Post, url);
        inner.append_header("x-tag", "one");
        inner.append_header("x-tag", "two");
        inner.append_header("idempotency-key", "k-1");
        let request: tide::Request<()> = inner.into();

        let parts = request_parts(&request).unwrap();
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(parts.uri, "/orders?a=1&b=2");
        let tags: Vec<_> = parts.headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["one", "two"]);
        assert_eq!(parts.headers["idempotency-key"], "k-1");
    }
}
