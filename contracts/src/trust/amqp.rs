//! The AMQP headers that carry a [`Seal`] (feature `amqp`, for the crates that speak to the
//! broker).

use super::seal::{Seal, SealHeaderError, SealHeaders, KEY_HEADER, MAC_HEADER, SESSION_HEADER, SIGNATURE_HEADER};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

/// `properties` with the seal's headers added.
pub fn with_seal(properties: BasicProperties, seal: &Seal) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in seal.to_headers() {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    properties.with_headers(headers)
}

/// The seal a message carries in its headers: `Ok(None)` when it carries none.
pub fn seal_of(properties: &BasicProperties) -> Result<Option<Seal>, SealHeaderError> {
    let text = |name: &str| match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(value) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        _ => None,
    };
    let [key, signature, session, mac] = [KEY_HEADER, SIGNATURE_HEADER, SESSION_HEADER, MAC_HEADER].map(text);
    Seal::from_headers(SealHeaders {
        key: key.as_deref(),
        signature: signature.as_deref(),
        session: session.as_deref(),
        mac: mac.as_deref(),
    })
}
