//! The attribute keys spans carry, named once: a span stores a one-byte
//! key per attribute instead of a 16-byte `&str` (its attribute list is a
//! third of a span's memory, and the agent holds tens of thousands of
//! spans at full load).

/// Declares the keys once: the enum, in this order, and their names at the
/// same indices.
macro_rules! keys {
    ($($key:ident = $name:literal,)*) => {
        /// An attribute key the agent itself adds to spans.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Key {
            $(#[doc = concat!("`", $name, "`")] $key,)*
        }

        /// The names, at their keys' indices.
        const NAMES: &[&str] = &[$($name,)*];
    };
}

keys! {
    HttpRequestMethod = "http.request.method",
    HttpRequestMethodOriginal = "http.request.method_original",
    HeadersUnknown = "tracer.headers_unknown",
    UrlPath = "url.path",
    UrlQuery = "url.query",
    UrlScheme = "url.scheme",
    UrlFull = "url.full",
    NetworkProtocolVersion = "network.protocol.version",
    ServerAddress = "server.address",
    ServerPort = "server.port",
    ClientAddress = "client.address",
    NetworkPeerAddress = "network.peer.address",
    NetworkPeerPort = "network.peer.port",
    UserAgentOriginal = "user_agent.original",
    RpcSystem = "rpc.system",
    RpcService = "rpc.service",
    RpcMethod = "rpc.method",
    RpcGrpcStatusCode = "rpc.grpc.status_code",
    RpcMessagesSent = "tracer.rpc.messages_sent",
    RpcMessagesReceived = "tracer.rpc.messages_received",
    RpcMessagesLowerBound = "tracer.rpc.messages_lower_bound",
    HttpResponseStatusCode = "http.response.status_code",
    ResponseHeadersUnknown = "tracer.response_headers_unknown",
    ErrorType = "error.type",
    PyroscopeProfileId = "pyroscope.profile.id",
    CpuSampledTimeNs = "tracer.cpu.sampled_time_ns",
    CpuSamples = "tracer.cpu.samples",
}

/// How many keys there are: stored indices past it name a span's other keys.
pub(crate) const COUNT: usize = NAMES.len();

impl Key {
    /// The key as exported.
    pub const fn as_str(self) -> &'static str {
        NAMES[self as usize]
    }

    /// The stored index of the key named `s`, if it is one of these.
    pub(crate) fn find(s: &str) -> Option<u16> {
        NAMES.iter().position(|n| *n == s).map(|i| i as u16)
    }

    /// The name of the key of index `i` (`key as usize`).
    pub(crate) fn name_at(i: usize) -> Option<&'static str> {
        NAMES.get(i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::{Key, COUNT, NAMES};

    #[test]
    fn every_key_is_named_once_and_found_by_its_name() {
        for (i, name) in NAMES.iter().enumerate() {
            assert_eq!(Key::find(name), Some(i as u16));
            assert_eq!(Key::name_at(i), Some(*name));
        }
        assert_eq!(Key::ErrorType.as_str(), "error.type");
        assert_eq!(Key::CpuSamples as usize, COUNT - 1);
        let mut names = NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COUNT);
        assert_eq!(Key::find("http.request"), None);
        assert_eq!(Key::name_at(COUNT), None);
    }
}
