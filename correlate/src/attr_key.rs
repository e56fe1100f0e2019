//! The attribute keys spans carry, named once: a span stores a one-byte
//! key per attribute instead of a 16-byte `&str` (its attribute list is a
//! third of a span's memory, and the agent holds tens of thousands of
//! spans at full load).

/// An attribute key the agent itself adds to spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Key {
    /// `http.request.method`
    HttpRequestMethod,
    /// `http.request.method_original`
    HttpRequestMethodOriginal,
    /// `tracer.headers_unknown`
    HeadersUnknown,
    /// `url.path`
    UrlPath,
    /// `url.query`
    UrlQuery,
    /// `url.scheme`
    UrlScheme,
    /// `url.full`
    UrlFull,
    /// `network.protocol.version`
    NetworkProtocolVersion,
    /// `server.address`
    ServerAddress,
    /// `server.port`
    ServerPort,
    /// `client.address`
    ClientAddress,
    /// `network.peer.address`
    NetworkPeerAddress,
    /// `network.peer.port`
    NetworkPeerPort,
    /// `user_agent.original`
    UserAgentOriginal,
    /// `rpc.system`
    RpcSystem,
    /// `rpc.service`
    RpcService,
    /// `rpc.method`
    RpcMethod,
    /// `rpc.grpc.status_code`
    RpcGrpcStatusCode,
    /// `tracer.rpc.messages_sent`
    RpcMessagesSent,
    /// `tracer.rpc.messages_received`
    RpcMessagesReceived,
    /// `tracer.rpc.messages_lower_bound`
    RpcMessagesLowerBound,
    /// `http.response.status_code`
    HttpResponseStatusCode,
    /// `tracer.response_headers_unknown`
    ResponseHeadersUnknown,
    /// `error.type`
    ErrorType,
    /// `pyroscope.profile.id`: the span's profile in Pyroscope.
    PyroscopeProfileId,
    /// `tracer.cpu.sampled_time_ns`
    CpuSampledTimeNs,
    /// `tracer.cpu.samples`
    CpuSamples,
}

impl Key {
    /// Every key, in the order of their discriminants.
    pub(crate) const ALL: [Key; 27] = [
        Key::HttpRequestMethod,
        Key::HttpRequestMethodOriginal,
        Key::HeadersUnknown,
        Key::UrlPath,
        Key::UrlQuery,
        Key::UrlScheme,
        Key::UrlFull,
        Key::NetworkProtocolVersion,
        Key::ServerAddress,
        Key::ServerPort,
        Key::ClientAddress,
        Key::NetworkPeerAddress,
        Key::NetworkPeerPort,
        Key::UserAgentOriginal,
        Key::RpcSystem,
        Key::RpcService,
        Key::RpcMethod,
        Key::RpcGrpcStatusCode,
        Key::RpcMessagesSent,
        Key::RpcMessagesReceived,
        Key::RpcMessagesLowerBound,
        Key::HttpResponseStatusCode,
        Key::ResponseHeadersUnknown,
        Key::ErrorType,
        Key::PyroscopeProfileId,
        Key::CpuSampledTimeNs,
        Key::CpuSamples,
    ];

    /// The key as exported.
    pub const fn as_str(self) -> &'static str {
        match self {
            Key::HttpRequestMethod => "http.request.method",
            Key::HttpRequestMethodOriginal => "http.request.method_original",
            Key::HeadersUnknown => "tracer.headers_unknown",
            Key::UrlPath => "url.path",
            Key::UrlQuery => "url.query",
            Key::UrlScheme => "url.scheme",
            Key::UrlFull => "url.full",
            Key::NetworkProtocolVersion => "network.protocol.version",
            Key::ServerAddress => "server.address",
            Key::ServerPort => "server.port",
            Key::ClientAddress => "client.address",
            Key::NetworkPeerAddress => "network.peer.address",
            Key::NetworkPeerPort => "network.peer.port",
            Key::UserAgentOriginal => "user_agent.original",
            Key::RpcSystem => "rpc.system",
            Key::RpcService => "rpc.service",
            Key::RpcMethod => "rpc.method",
            Key::RpcGrpcStatusCode => "rpc.grpc.status_code",
            Key::RpcMessagesSent => "tracer.rpc.messages_sent",
            Key::RpcMessagesReceived => "tracer.rpc.messages_received",
            Key::RpcMessagesLowerBound => "tracer.rpc.messages_lower_bound",
            Key::HttpResponseStatusCode => "http.response.status_code",
            Key::ResponseHeadersUnknown => "tracer.response_headers_unknown",
            Key::ErrorType => "error.type",
            Key::PyroscopeProfileId => "pyroscope.profile.id",
            Key::CpuSampledTimeNs => "tracer.cpu.sampled_time_ns",
            Key::CpuSamples => "tracer.cpu.samples",
        }
    }

    /// The key named `s`, if it is one of these.
    pub(crate) fn find(s: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The name of the key of index `i` (`key as usize`): one load, where
    /// `as_str`'s match is a jump per attribute exported.
    pub(crate) fn name_at(i: usize) -> Option<&'static str> {
        NAMES.get(i).copied()
    }
}

const NAMES: [&str; Key::ALL.len()] = {
    let mut names = [""; Key::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = Key::ALL[i].as_str();
        i += 1;
    }
    names
};

#[cfg(test)]
mod tests {
    use super::Key;

    #[test]
    fn every_key_is_listed_at_its_index_and_named_once() {
        for (i, k) in Key::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i, "{k:?}");
            assert_eq!(Key::name_at(i), Some(k.as_str()));
            assert_eq!(Key::find(k.as_str()), Some(k));
        }
        let mut names: Vec<&str> = Key::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Key::ALL.len());
        assert_eq!(Key::find("http.request"), None);
        assert_eq!(Key::name_at(Key::ALL.len()), None);
    }
}
