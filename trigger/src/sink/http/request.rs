//! Request mapping of an HTTP sink (ofe additions on `sink`): the method, headers set on
//! every request and headers computed per event, a URI whose path and query hold CEL
//! expressions, and the CloudEvents content mode. Compiled once, with the sink.

use std::sync::Arc;

use cel::{Program, Value};
use ofe_crds::diagnostic::Diagnostic;
use ofe_crds::validate::{UriPart, uri_template};
use ofe_crds::{ContentMode, HttpMethod, SinkSpec};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::condition::caret;
use crate::filter::{EventData, compile_cel, type_name};

/// How a sink's requests are made, beyond a POST of the event in binary mode to one URL.
#[derive(Debug)]
pub struct RequestMap {
    /// The method.
    pub method: reqwest::Method,
    /// Headers set on every request.
    pub headers: HeaderMap,
    /// Headers computed per event.
    dynamic: Vec<(HeaderName, Arc<Program>)>,
    /// The URI's parts, when it holds expressions.
    uri: Option<Vec<Part>>,
    /// Whether the event goes as one `application/cloudevents+json` document.
    pub structured: bool,
}

#[derive(Debug)]
enum Part {
    Text(String),
    Expression(String, Arc<Program>),
}

impl RequestMap {
    /// The mapping `sink` (at `path`) asks for; `None` when it asks for nothing beyond the
    /// default. Every expression that cannot run is a diagnostic naming its field and column.
    pub fn compile(path: &str, sink: &SinkSpec) -> Result<Option<Self>, Vec<Diagnostic>> {
        let mut errors = Vec::new();
        let uri = match sink.uri.as_deref().map(uri_template) {
            Some(Ok(parts)) if parts.iter().any(|p| matches!(p, UriPart::Expression { .. })) => {
                let mut compiled = Vec::new();
                for part in parts {
                    match part {
                        UriPart::Text(text) => compiled.push(Part::Text(text)),
                        UriPart::Expression { text, column } => match compile_cel(&text) {
                            Ok(program) => compiled.push(Part::Expression(text, program)),
                            Err(e) => {
                                // The caret under the whole URI, not the expression alone.
                                let first = e.message.lines().next().unwrap_or_default();
                                let message = match (e.column, first.rsplit_once(" (column")) {
                                    (Some(at), Some((what, _))) => {
                                        let uri = sink.uri.as_deref().unwrap_or_default();
                                        caret(uri, column + at - 1, what, "fix the expression")
                                            .message
                                    }
                                    _ => e.message,
                                };
                                errors.push(Diagnostic::error(format!("{path}.uri"), message));
                            }
                        },
                    }
                }
                Some(compiled)
            }
            // A URI without expressions, or one `check_sink` already refuses.
            _ => None,
        };
        // A name or value that is not a header's is `ofe_crds::validate::check_sink`'s
        // diagnostic, which every path that plans a sink has made first; here it is skipped.
        let mut headers = HeaderMap::new();
        for (name, value) in sink.headers.iter().flatten() {
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
            {
                headers.insert(name, value);
            }
        }
        match sink.auth.as_ref().map(credential) {
            Some(Ok(Some((name, value)))) => drop(headers.insert(name, value)),
            Some(Err(problem)) => errors.push(Diagnostic::error(format!("{path}.auth"), problem)),
            // No scheme, or half of one: `check_sink`'s diagnostic.
            Some(Ok(None)) | None => {}
        }
        let mut dynamic = Vec::new();
        for (name, text) in sink.dynamic_headers.iter().flatten() {
            let at = format!("{path}.dynamicHeaders.{name}");
            let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else { continue };
            match compile_cel(text) {
                Ok(program) => dynamic.push((header, program)),
                Err(e) => errors.push(Diagnostic::error(at, e.message)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let method = match sink.method.unwrap_or_default() {
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
            HttpMethod::Patch => reqwest::Method::PATCH,
        };
        let structured = sink.mode == Some(ContentMode::Structured);
        let plain = method == reqwest::Method::POST
            && headers.is_empty()
            && dynamic.is_empty()
            && uri.is_none()
            && !structured;
        Ok((!plain).then_some(Self { method, headers, dynamic, uri, structured }))
    }

    /// The URL for `event`, when the URI holds expressions: each value percent-encoded.
    pub fn url(&self, view: &EventData<'_>) -> Result<Option<reqwest::Url>, String> {
        let Some(parts) = &self.uri else { return Ok(None) };
        let mut url = String::new();
        for part in parts {
            match part {
                Part::Text(text) => url.push_str(text),
                Part::Expression(text, program) => {
                    let value = view
                        .try_eval(program)
                        .map_err(|e| format!("sink.uri `{{{text}}}`: {e}"))?;
                    let value =
                        scalar(&value).map_err(|e| format!("sink.uri `{{{text}}}`: {e}"))?;
                    url.extend(percent_encode(&value));
                }
            }
        }
        reqwest::Url::parse(&url)
            .map(Some)
            .map_err(|e| format!("sink.uri gave `{url}`, not a URL: {e}"))
    }

    /// Adds the headers of `event` (every request's, then the computed ones) to `headers`.
    pub fn headers(&self, view: &EventData<'_>, headers: &mut HeaderMap) -> Result<(), String> {
        for (name, value) in &self.headers {
            headers.insert(name, value.clone());
        }
        for (name, program) in &self.dynamic {
            let at = || format!("sink.dynamicHeaders.{name}");
            let value = view.try_eval(program).map_err(|e| format!("{}: {e}", at()))?;
            let value = scalar(&value).map_err(|e| format!("{}: {e}", at()))?;
            let value = HeaderValue::from_str(&value)
                .map_err(|_| format!("{}: gave `{value}`, which a header cannot hold", at()))?;
            headers.insert(name, value);
        }
        Ok(())
    }
}

/// The header `auth` sets, its value marked sensitive (debug output shows `Sensitive`); the
/// error says why a credential cannot go in a header, without showing it. The fields hold
/// their values by now: `secretKeyRef`s were read when the manifest loaded.
fn credential(auth: &ofe_crds::SinkAuth) -> Result<Option<(HeaderName, HeaderValue)>, String> {
    use base64::Engine as _;
    let (name, text, field) = if let Some(token) = &auth.bearer_token {
        (reqwest::header::AUTHORIZATION, format!("Bearer {token}"), "bearerToken")
    } else if let (Some(user), Some(password)) = (&auth.username, &auth.password) {
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        (reqwest::header::AUTHORIZATION, format!("Basic {pair}"), "username")
    } else if let Some(key) = &auth.api_key {
        let header = auth.api_key_header.as_deref().unwrap_or("X-API-Key");
        let Ok(name) = HeaderName::from_bytes(header.as_bytes()) else { return Ok(None) };
        (name, key.clone(), "apiKey")
    } else {
        return Ok(None);
    };
    let mut value = HeaderValue::from_str(&text).map_err(|_| {
        format!(
            "`{field}` holds a line break or another control character, which a header cannot \
             carry (a Secret written with `echo` without `-n`?); remove it"
        )
    })?;
    value.set_sensitive(true);
    Ok(Some((name, value)))
}

/// A string, number or bool as text.
pub(crate) fn scalar(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.as_str().to_string()),
        Value::Int(n) => Ok(n.to_string()),
        Value::UInt(n) => Ok(n.to_string()),
        Value::Float(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("gave {}, not a string, number or bool", type_name(other))),
    }
}

/// Everything but RFC 3986's unreserved characters (letters, digits, `-._~`): what a value
/// put into a sink's URI has encoded, so that it cannot add a path segment, a query parameter
/// or a fragment.
const COMPONENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `text` percent-encoded for a place in a sink's URI.
fn percent_encode(text: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(text, COMPONENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_cannot_add_a_segment_or_a_parameter() {
        assert_eq!(percent_encode("a b/c?d=e&f#g~h").to_string(), "a%20b%2Fc%3Fd%3De%26f%23g~h");
        assert_eq!(percent_encode("é").to_string(), "%C3%A9");
    }

    #[test]
    fn a_credential_a_header_cannot_carry_is_refused_without_showing_it() {
        let sink: SinkSpec =
            serde_saphyr::from_str("uri: http://fn\nauth: { bearerToken: \"tok-91d2\\n\" }")
                .expect("yaml");
        let errors = RequestMap::compile("spec.sink", &sink).expect_err("a line break");
        assert_eq!(errors[0].path, "spec.sink.auth");
        assert!(errors[0].message.contains("`bearerToken` holds a line break"), "{errors:?}");
        assert!(!errors[0].message.contains("tok-91d2"), "the value is not shown: {errors:?}");
    }
}
