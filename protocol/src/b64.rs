//! base64url without padding (RFC 4648 §5), the only base64 flavour on the wire.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Encodes bytes as unpadded base64url.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes unpadded base64url. Padding, the standard alphabet and whitespace are refused:
/// a second spelling of the same bytes would make signatures and ids ambiguous.
pub fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(text)
}

/// Decodes into a fixed buffer, returning how many bytes were written.
pub fn decode_into(text: &str, out: &mut [u8]) -> Result<usize, base64::DecodeSliceError> {
    URL_SAFE_NO_PAD.decode_slice(text, out)
}
