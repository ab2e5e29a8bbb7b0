//! Facts of Hubble's API as of Cilium v1.19.4 (the version weir targets): every message of
//! `flow`, `observer` and `relay` with its fields (name, number, type) and every enum with its values,
//! read from that release's api/v1 protos. weir's own protos declare a subset; a test checks
//! every field and value they declare against these, so a wrong number or type is caught.
//! Data only: regenerate from a later release's protos when weir targets it.

/// The Hubble release these facts are from.
pub const HUBBLE_VERSION: &str = "1.19.4";

/// A field: its name, number and type (`repeated ` first where it is).
pub type Field = (&'static str, u32, &'static str);

/// (message, its fields); nested messages as `Outer.Inner`.
pub const MESSAGES: &[(&str, &[Field])] = &[
    (
        "flow.Flow",
        &[
            ("time", 1, "google.protobuf.Timestamp"),
            ("uuid", 34, "string"),
            ("emitter", 41, "flow.Emitter"),
            ("verdict", 2, "flow.Verdict"),
            ("drop_reason", 3, "uint32"),
            ("auth_type", 35, "flow.AuthType"),
            ("ethernet", 4, "flow.Ethernet"),
            ("IP", 5, "flow.IP"),
            ("l4", 6, "flow.Layer4"),
            ("tunnel", 39, "flow.Tunnel"),
            ("source", 8, "flow.Endpoint"),
            ("destination", 9, "flow.Endpoint"),
            ("Type", 10, "flow.FlowType"),
            ("node_name", 11, "string"),
            ("node_labels", 37, "repeated string"),
            ("source_names", 13, "repeated string"),
            ("destination_names", 14, "repeated string"),
            ("l7", 15, "flow.Layer7"),
            ("reply", 16, "bool"),
            ("event_type", 19, "flow.CiliumEventType"),
            ("source_service", 20, "flow.Service"),
            ("destination_service", 21, "flow.Service"),
            ("traffic_direction", 22, "flow.TrafficDirection"),
            ("policy_match_type", 23, "uint32"),
            ("trace_observation_point", 24, "flow.TraceObservationPoint"),
            ("trace_reason", 36, "flow.TraceReason"),
            ("file", 38, "flow.FileInfo"),
            ("ip_trace_id", 40, "flow.IPTraceID"),
            ("drop_reason_desc", 25, "flow.DropReason"),
            ("is_reply", 26, "google.protobuf.BoolValue"),
            ("debug_capture_point", 27, "flow.DebugCapturePoint"),
            ("interface", 28, "flow.NetworkInterface"),
            ("proxy_port", 29, "uint32"),
            ("trace_context", 30, "flow.TraceContext"),
            ("sock_xlate_point", 31, "flow.SocketTranslationPoint"),
            ("socket_cookie", 32, "uint64"),
            ("cgroup_id", 33, "uint64"),
            ("Summary", 100000, "string"),
            ("extensions", 150000, "google.protobuf.Any"),
            ("egress_allowed_by", 21001, "repeated flow.Policy"),
            ("ingress_allowed_by", 21002, "repeated flow.Policy"),
            ("egress_denied_by", 21004, "repeated flow.Policy"),
            ("ingress_denied_by", 21005, "repeated flow.Policy"),
            ("policy_log", 21006, "repeated string"),
            ("aggregate", 21007, "flow.Aggregate"),
        ],
    ),
    ("flow.Emitter", &[("name", 1, "string"), ("version", 2, "string")]),
    ("flow.FileInfo", &[("name", 1, "string"), ("line", 2, "uint32")]),
    (
        "flow.Layer4",
        &[
            ("TCP", 1, "flow.TCP"),
            ("UDP", 2, "flow.UDP"),
            ("ICMPv4", 3, "flow.ICMPv4"),
            ("ICMPv6", 4, "flow.ICMPv6"),
            ("SCTP", 5, "flow.SCTP"),
            ("VRRP", 6, "flow.VRRP"),
            ("IGMP", 7, "flow.IGMP"),
        ],
    ),
    (
        "flow.Layer7",
        &[
            ("type", 1, "flow.L7FlowType"),
            ("latency_ns", 2, "uint64"),
            ("dns", 100, "flow.DNS"),
            ("http", 101, "flow.HTTP"),
            ("kafka", 102, "flow.Kafka"),
        ],
    ),
    ("flow.TraceContext", &[("parent", 1, "flow.TraceParent")]),
    ("flow.TraceParent", &[("trace_id", 1, "string")]),
    (
        "flow.Endpoint",
        &[
            ("ID", 1, "uint32"),
            ("identity", 2, "uint32"),
            ("cluster_name", 7, "string"),
            ("namespace", 3, "string"),
            ("labels", 4, "repeated string"),
            ("pod_name", 5, "string"),
            ("workloads", 6, "repeated flow.Workload"),
        ],
    ),
    ("flow.Workload", &[("name", 1, "string"), ("kind", 2, "string")]),
    ("flow.TCP", &[("source_port", 1, "uint32"), ("destination_port", 2, "uint32"), ("flags", 3, "flow.TCPFlags")]),
    (
        "flow.IP",
        &[
            ("source", 1, "string"),
            ("source_xlated", 5, "string"),
            ("destination", 2, "string"),
            ("ipVersion", 3, "flow.IPVersion"),
            ("encrypted", 4, "bool"),
        ],
    ),
    ("flow.Ethernet", &[("source", 1, "string"), ("destination", 2, "string")]),
    (
        "flow.TCPFlags",
        &[
            ("FIN", 1, "bool"),
            ("SYN", 2, "bool"),
            ("RST", 3, "bool"),
            ("PSH", 4, "bool"),
            ("ACK", 5, "bool"),
            ("URG", 6, "bool"),
            ("ECE", 7, "bool"),
            ("CWR", 8, "bool"),
            ("NS", 9, "bool"),
        ],
    ),
    ("flow.UDP", &[("source_port", 1, "uint32"), ("destination_port", 2, "uint32")]),
    ("flow.SCTP", &[("source_port", 1, "uint32"), ("destination_port", 2, "uint32")]),
    ("flow.ICMPv4", &[("type", 1, "uint32"), ("code", 2, "uint32")]),
    ("flow.ICMPv6", &[("type", 1, "uint32"), ("code", 2, "uint32")]),
    ("flow.VRRP", &[("type", 1, "uint32"), ("vrid", 2, "uint32"), ("priority", 3, "uint32")]),
    ("flow.IGMP", &[("type", 1, "uint32"), ("group_address", 2, "string")]),
    (
        "flow.Tunnel",
        &[
            ("protocol", 1, "flow.Tunnel.Protocol"),
            ("IP", 2, "flow.IP"),
            ("l4", 3, "flow.Layer4"),
            ("vni", 4, "uint32"),
        ],
    ),
    (
        "flow.Policy",
        &[
            ("name", 1, "string"),
            ("namespace", 2, "string"),
            ("labels", 3, "repeated string"),
            ("revision", 4, "uint64"),
            ("kind", 5, "string"),
        ],
    ),
    ("flow.EventTypeFilter", &[("type", 1, "int32"), ("match_sub_type", 2, "bool"), ("sub_type", 3, "int32")]),
    ("flow.CiliumEventType", &[("type", 1, "int32"), ("sub_type", 2, "int32")]),
    (
        "flow.FlowFilter",
        &[
            ("uuid", 29, "repeated string"),
            ("source_ip", 1, "repeated string"),
            ("source_ip_xlated", 34, "repeated string"),
            ("source_pod", 2, "repeated string"),
            ("source_fqdn", 7, "repeated string"),
            ("source_label", 10, "repeated string"),
            ("source_service", 16, "repeated string"),
            ("source_workload", 26, "repeated flow.Workload"),
            ("source_cluster_name", 37, "repeated string"),
            ("destination_ip", 3, "repeated string"),
            ("destination_pod", 4, "repeated string"),
            ("destination_fqdn", 8, "repeated string"),
            ("destination_label", 11, "repeated string"),
            ("destination_service", 17, "repeated string"),
            ("destination_workload", 27, "repeated flow.Workload"),
            ("destination_cluster_name", 38, "repeated string"),
            ("traffic_direction", 30, "repeated flow.TrafficDirection"),
            ("verdict", 5, "repeated flow.Verdict"),
            ("drop_reason_desc", 33, "repeated flow.DropReason"),
            ("interface", 35, "repeated flow.NetworkInterface"),
            ("event_type", 6, "repeated flow.EventTypeFilter"),
            ("http_status_code", 9, "repeated string"),
            ("protocol", 12, "repeated string"),
            ("source_port", 13, "repeated string"),
            ("destination_port", 14, "repeated string"),
            ("reply", 15, "repeated bool"),
            ("dns_query", 18, "repeated string"),
            ("source_identity", 19, "repeated uint32"),
            ("destination_identity", 20, "repeated uint32"),
            ("http_method", 21, "repeated string"),
            ("http_path", 22, "repeated string"),
            ("http_url", 31, "repeated string"),
            ("http_header", 32, "repeated flow.HTTPHeader"),
            ("tcp_flags", 23, "repeated flow.TCPFlags"),
            ("node_name", 24, "repeated string"),
            ("node_labels", 36, "repeated string"),
            ("ip_version", 25, "repeated flow.IPVersion"),
            ("trace_id", 28, "repeated string"),
            ("ip_trace_id", 39, "repeated uint64"),
            ("encrypted", 40, "repeated bool"),
            ("experimental", 999, "flow.FlowFilter.Experimental"),
        ],
    ),
    ("flow.FlowFilter.Experimental", &[("cel_expression", 1, "repeated string")]),
    (
        "flow.DNS",
        &[
            ("query", 1, "string"),
            ("ips", 2, "repeated string"),
            ("ttl", 3, "uint32"),
            ("cnames", 4, "repeated string"),
            ("observation_source", 5, "string"),
            ("rcode", 6, "uint32"),
            ("qtypes", 7, "repeated string"),
            ("rrtypes", 8, "repeated string"),
        ],
    ),
    ("flow.HTTPHeader", &[("key", 1, "string"), ("value", 2, "string")]),
    (
        "flow.HTTP",
        &[
            ("code", 1, "uint32"),
            ("method", 2, "string"),
            ("url", 3, "string"),
            ("protocol", 4, "string"),
            ("headers", 5, "repeated flow.HTTPHeader"),
        ],
    ),
    (
        "flow.Kafka",
        &[
            ("error_code", 1, "int32"),
            ("api_version", 2, "int32"),
            ("api_key", 3, "string"),
            ("correlation_id", 4, "int32"),
            ("topic", 5, "string"),
        ],
    ),
    ("flow.Service", &[("name", 1, "string"), ("namespace", 2, "string")]),
    ("flow.IPTraceID", &[("trace_id", 1, "uint64"), ("ip_option_type", 2, "uint32")]),
    (
        "flow.LostEvent",
        &[
            ("source", 1, "flow.LostEventSource"),
            ("num_events_lost", 2, "uint64"),
            ("cpu", 3, "google.protobuf.Int32Value"),
            ("first", 4, "google.protobuf.Timestamp"),
            ("last", 5, "google.protobuf.Timestamp"),
        ],
    ),
    (
        "flow.AgentEvent",
        &[
            ("type", 1, "flow.AgentEventType"),
            ("unknown", 100, "flow.AgentEventUnknown"),
            ("agent_start", 101, "flow.TimeNotification"),
            ("policy_update", 102, "flow.PolicyUpdateNotification"),
            ("endpoint_regenerate", 103, "flow.EndpointRegenNotification"),
            ("endpoint_update", 104, "flow.EndpointUpdateNotification"),
            ("ipcache_update", 105, "flow.IPCacheNotification"),
            ("service_upsert", 106, "flow.ServiceUpsertNotification"),
            ("service_delete", 107, "flow.ServiceDeleteNotification"),
        ],
    ),
    ("flow.AgentEventUnknown", &[("type", 1, "string"), ("notification", 2, "string")]),
    ("flow.TimeNotification", &[("time", 1, "google.protobuf.Timestamp")]),
    (
        "flow.PolicyUpdateNotification",
        &[("labels", 1, "repeated string"), ("revision", 2, "uint64"), ("rule_count", 3, "int64")],
    ),
    (
        "flow.EndpointRegenNotification",
        &[("id", 1, "uint64"), ("labels", 2, "repeated string"), ("error", 3, "string")],
    ),
    (
        "flow.EndpointUpdateNotification",
        &[
            ("id", 1, "uint64"),
            ("labels", 2, "repeated string"),
            ("error", 3, "string"),
            ("pod_name", 4, "string"),
            ("namespace", 5, "string"),
        ],
    ),
    (
        "flow.IPCacheNotification",
        &[
            ("cidr", 1, "string"),
            ("identity", 2, "uint32"),
            ("old_identity", 3, "google.protobuf.UInt32Value"),
            ("host_ip", 4, "string"),
            ("old_host_ip", 5, "string"),
            ("encrypt_key", 6, "uint32"),
            ("namespace", 7, "string"),
            ("pod_name", 8, "string"),
        ],
    ),
    ("flow.ServiceUpsertNotificationAddr", &[("ip", 1, "string"), ("port", 2, "uint32")]),
    (
        "flow.ServiceUpsertNotification",
        &[
            ("id", 1, "uint32"),
            ("frontend_address", 2, "flow.ServiceUpsertNotificationAddr"),
            ("backend_addresses", 3, "repeated flow.ServiceUpsertNotificationAddr"),
            ("type", 4, "string"),
            ("traffic_policy", 5, "string"),
            ("name", 6, "string"),
            ("namespace", 7, "string"),
            ("ext_traffic_policy", 8, "string"),
            ("int_traffic_policy", 9, "string"),
        ],
    ),
    ("flow.ServiceDeleteNotification", &[("id", 1, "uint32")]),
    ("flow.NetworkInterface", &[("index", 1, "uint32"), ("name", 2, "string")]),
    (
        "flow.DebugEvent",
        &[
            ("type", 1, "flow.DebugEventType"),
            ("source", 2, "flow.Endpoint"),
            ("hash", 3, "google.protobuf.UInt32Value"),
            ("arg1", 4, "google.protobuf.UInt32Value"),
            ("arg2", 5, "google.protobuf.UInt32Value"),
            ("arg3", 6, "google.protobuf.UInt32Value"),
            ("message", 7, "string"),
            ("cpu", 8, "google.protobuf.Int32Value"),
        ],
    ),
    (
        "flow.Aggregate",
        &[
            ("ingress_flow_count", 1, "uint32"),
            ("egress_flow_count", 2, "uint32"),
            ("unknown_direction_flow_count", 3, "uint32"),
        ],
    ),
    (
        "relay.NodeStatusEvent",
        &[("state_change", 1, "relay.NodeState"), ("node_names", 2, "repeated string"), ("message", 3, "string")],
    ),
    ("observer.ServerStatusRequest", &[]),
    (
        "observer.ServerStatusResponse",
        &[
            ("num_flows", 1, "uint64"),
            ("max_flows", 2, "uint64"),
            ("seen_flows", 3, "uint64"),
            ("uptime_ns", 4, "uint64"),
            ("num_connected_nodes", 5, "google.protobuf.UInt32Value"),
            ("num_unavailable_nodes", 6, "google.protobuf.UInt32Value"),
            ("unavailable_nodes", 7, "repeated string"),
            ("version", 8, "string"),
            ("flows_rate", 9, "double"),
        ],
    ),
    (
        "observer.GetFlowsRequest",
        &[
            ("number", 1, "uint64"),
            ("first", 9, "bool"),
            ("follow", 3, "bool"),
            ("blacklist", 5, "repeated flow.FlowFilter"),
            ("whitelist", 6, "repeated flow.FlowFilter"),
            ("since", 7, "google.protobuf.Timestamp"),
            ("until", 8, "google.protobuf.Timestamp"),
            ("field_mask", 10, "google.protobuf.FieldMask"),
            ("experimental", 999, "observer.GetFlowsRequest.Experimental"),
            ("extensions", 150000, "google.protobuf.Any"),
        ],
    ),
    ("observer.GetFlowsRequest.Experimental", &[]),
    (
        "observer.GetFlowsResponse",
        &[
            ("flow", 1, "flow.Flow"),
            ("node_status", 2, "relay.NodeStatusEvent"),
            ("lost_events", 3, "flow.LostEvent"),
            ("node_name", 1000, "string"),
            ("time", 1001, "google.protobuf.Timestamp"),
        ],
    ),
    (
        "observer.GetAgentEventsRequest",
        &[
            ("number", 1, "uint64"),
            ("first", 9, "bool"),
            ("follow", 2, "bool"),
            ("since", 7, "google.protobuf.Timestamp"),
            ("until", 8, "google.protobuf.Timestamp"),
        ],
    ),
    (
        "observer.GetAgentEventsResponse",
        &[
            ("agent_event", 1, "flow.AgentEvent"),
            ("node_name", 1000, "string"),
            ("time", 1001, "google.protobuf.Timestamp"),
        ],
    ),
    (
        "observer.GetDebugEventsRequest",
        &[
            ("number", 1, "uint64"),
            ("first", 9, "bool"),
            ("follow", 2, "bool"),
            ("since", 7, "google.protobuf.Timestamp"),
            ("until", 8, "google.protobuf.Timestamp"),
        ],
    ),
    (
        "observer.GetDebugEventsResponse",
        &[
            ("debug_event", 1, "flow.DebugEvent"),
            ("node_name", 1000, "string"),
            ("time", 1001, "google.protobuf.Timestamp"),
        ],
    ),
    ("observer.GetNodesRequest", &[]),
    ("observer.GetNodesResponse", &[("nodes", 1, "repeated observer.Node")]),
    (
        "observer.Node",
        &[
            ("name", 1, "string"),
            ("version", 2, "string"),
            ("address", 3, "string"),
            ("state", 4, "relay.NodeState"),
            ("tls", 5, "observer.TLS"),
            ("uptime_ns", 6, "uint64"),
            ("num_flows", 7, "uint64"),
            ("max_flows", 8, "uint64"),
            ("seen_flows", 9, "uint64"),
        ],
    ),
    ("observer.TLS", &[("enabled", 1, "bool"), ("server_name", 2, "string")]),
    ("observer.GetNamespacesRequest", &[]),
    ("observer.GetNamespacesResponse", &[("namespaces", 1, "repeated observer.Namespace")]),
    ("observer.Namespace", &[("cluster", 1, "string"), ("namespace", 2, "string")]),
    (
        "observer.ExportEvent",
        &[
            ("flow", 1, "flow.Flow"),
            ("node_status", 2, "relay.NodeStatusEvent"),
            ("lost_events", 3, "flow.LostEvent"),
            ("agent_event", 4, "flow.AgentEvent"),
            ("debug_event", 5, "flow.DebugEvent"),
            ("node_name", 1000, "string"),
            ("time", 1001, "google.protobuf.Timestamp"),
        ],
    ),
];

/// (enum, [(value, number)]).
pub const ENUMS: &[(&str, &[(&str, i32)])] = &[
    ("flow.Tunnel.Protocol", &[("UNKNOWN", 0), ("VXLAN", 1), ("GENEVE", 2)]),
    ("flow.FlowType", &[("UNKNOWN_TYPE", 0), ("L3_L4", 1), ("L7", 2), ("SOCK", 3)]),
    ("flow.AuthType", &[("DISABLED", 0), ("SPIRE", 1), ("TEST_ALWAYS_FAIL", 2)]),
    (
        "flow.TraceObservationPoint",
        &[
            ("UNKNOWN_POINT", 0),
            ("TO_PROXY", 1),
            ("TO_HOST", 2),
            ("TO_STACK", 3),
            ("TO_OVERLAY", 4),
            ("TO_ENDPOINT", 101),
            ("FROM_ENDPOINT", 5),
            ("FROM_PROXY", 6),
            ("FROM_HOST", 7),
            ("FROM_STACK", 8),
            ("FROM_OVERLAY", 9),
            ("FROM_NETWORK", 10),
            ("TO_NETWORK", 11),
            ("FROM_CRYPTO", 12),
            ("TO_CRYPTO", 13),
        ],
    ),
    (
        "flow.TraceReason",
        &[
            ("TRACE_REASON_UNKNOWN", 0),
            ("NEW", 1),
            ("ESTABLISHED", 2),
            ("REPLY", 3),
            ("RELATED", 4),
            ("REOPENED", 5),
            ("SRV6_ENCAP", 6),
            ("SRV6_DECAP", 7),
            ("ENCRYPT_OVERLAY", 8),
        ],
    ),
    ("flow.L7FlowType", &[("UNKNOWN_L7_TYPE", 0), ("REQUEST", 1), ("RESPONSE", 2), ("SAMPLE", 3)]),
    ("flow.IPVersion", &[("IP_NOT_USED", 0), ("IPv4", 1), ("IPv6", 2)]),
    (
        "flow.Verdict",
        &[
            ("VERDICT_UNKNOWN", 0),
            ("FORWARDED", 1),
            ("DROPPED", 2),
            ("ERROR", 3),
            ("AUDIT", 4),
            ("REDIRECTED", 5),
            ("TRACED", 6),
            ("TRANSLATED", 7),
        ],
    ),
    (
        "flow.DropReason",
        &[
            ("DROP_REASON_UNKNOWN", 0),
            ("INVALID_SOURCE_MAC", 130),
            ("INVALID_DESTINATION_MAC", 131),
            ("INVALID_SOURCE_IP", 132),
            ("POLICY_DENIED", 133),
            ("INVALID_PACKET_DROPPED", 134),
            ("CT_TRUNCATED_OR_INVALID_HEADER", 135),
            ("CT_MISSING_TCP_ACK_FLAG", 136),
            ("CT_UNKNOWN_L4_PROTOCOL", 137),
            ("CT_CANNOT_CREATE_ENTRY_FROM_PACKET", 138),
            ("UNSUPPORTED_L3_PROTOCOL", 139),
            ("MISSED_TAIL_CALL", 140),
            ("ERROR_WRITING_TO_PACKET", 141),
            ("UNKNOWN_L4_PROTOCOL", 142),
            ("UNKNOWN_ICMPV4_CODE", 143),
            ("UNKNOWN_ICMPV4_TYPE", 144),
            ("UNKNOWN_ICMPV6_CODE", 145),
            ("UNKNOWN_ICMPV6_TYPE", 146),
            ("ERROR_RETRIEVING_TUNNEL_KEY", 147),
            ("ERROR_RETRIEVING_TUNNEL_OPTIONS", 148),
            ("INVALID_GENEVE_OPTION", 149),
            ("UNKNOWN_L3_TARGET_ADDRESS", 150),
            ("STALE_OR_UNROUTABLE_IP", 151),
            ("NO_MATCHING_LOCAL_CONTAINER_FOUND", 152),
            ("ERROR_WHILE_CORRECTING_L3_CHECKSUM", 153),
            ("ERROR_WHILE_CORRECTING_L4_CHECKSUM", 154),
            ("CT_MAP_INSERTION_FAILED", 155),
            ("INVALID_IPV6_EXTENSION_HEADER", 156),
            ("IP_FRAGMENTATION_NOT_SUPPORTED", 157),
            ("SERVICE_BACKEND_NOT_FOUND", 158),
            ("NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT", 160),
            ("FAILED_TO_INSERT_INTO_PROXYMAP", 161),
            ("REACHED_EDT_RATE_LIMITING_DROP_HORIZON", 162),
            ("UNKNOWN_CONNECTION_TRACKING_STATE", 163),
            ("LOCAL_HOST_IS_UNREACHABLE", 164),
            ("NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION", 165),
            ("UNSUPPORTED_L2_PROTOCOL", 166),
            ("NO_MAPPING_FOR_NAT_MASQUERADE", 167),
            ("UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE", 168),
            ("FIB_LOOKUP_FAILED", 169),
            ("ENCAPSULATION_TRAFFIC_IS_PROHIBITED", 170),
            ("INVALID_IDENTITY", 171),
            ("UNKNOWN_SENDER", 172),
            ("NAT_NOT_NEEDED", 173),
            ("IS_A_CLUSTERIP", 174),
            ("FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND", 175),
            ("FORBIDDEN_ICMPV6_MESSAGE", 176),
            ("DENIED_BY_LB_SRC_RANGE_CHECK", 177),
            ("SOCKET_LOOKUP_FAILED", 178),
            ("SOCKET_ASSIGN_FAILED", 179),
            ("PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL", 180),
            ("POLICY_DENY", 181),
            ("VLAN_FILTERED", 182),
            ("INVALID_VNI", 183),
            ("INVALID_TC_BUFFER", 184),
            ("NO_SID", 185),
            ("MISSING_SRV6_STATE", 186),
            ("NAT46", 187),
            ("NAT64", 188),
            ("AUTH_REQUIRED", 189),
            ("CT_NO_MAP_FOUND", 190),
            ("SNAT_NO_MAP_FOUND", 191),
            ("INVALID_CLUSTER_ID", 192),
            ("UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP", 193),
            ("NO_EGRESS_GATEWAY", 194),
            ("UNENCRYPTED_TRAFFIC", 195),
            ("TTL_EXCEEDED", 196),
            ("NO_NODE_ID", 197),
            ("DROP_RATE_LIMITED", 198),
            ("IGMP_HANDLED", 199),
            ("IGMP_SUBSCRIBED", 200),
            ("MULTICAST_HANDLED", 201),
            ("DROP_HOST_NOT_READY", 202),
            ("DROP_EP_NOT_READY", 203),
            ("DROP_NO_EGRESS_IP", 204),
            ("DROP_PUNT_PROXY", 205),
        ],
    ),
    ("flow.TrafficDirection", &[("TRAFFIC_DIRECTION_UNKNOWN", 0), ("INGRESS", 1), ("EGRESS", 2)]),
    (
        "flow.DebugCapturePoint",
        &[
            ("DBG_CAPTURE_POINT_UNKNOWN", 0),
            ("DBG_CAPTURE_DELIVERY", 4),
            ("DBG_CAPTURE_FROM_LB", 5),
            ("DBG_CAPTURE_AFTER_V46", 6),
            ("DBG_CAPTURE_AFTER_V64", 7),
            ("DBG_CAPTURE_PROXY_PRE", 8),
            ("DBG_CAPTURE_PROXY_POST", 9),
            ("DBG_CAPTURE_SNAT_PRE", 10),
            ("DBG_CAPTURE_SNAT_POST", 11),
        ],
    ),
    ("flow.EventType", &[("UNKNOWN", 0), ("EventSample", 9), ("RecordLost", 2)]),
    (
        "flow.LostEventSource",
        &[
            ("UNKNOWN_LOST_EVENT_SOURCE", 0),
            ("PERF_EVENT_RING_BUFFER", 1),
            ("OBSERVER_EVENTS_QUEUE", 2),
            ("HUBBLE_RING_BUFFER", 3),
        ],
    ),
    (
        "flow.AgentEventType",
        &[
            ("AGENT_EVENT_UNKNOWN", 0),
            ("AGENT_STARTED", 2),
            ("POLICY_UPDATED", 3),
            ("POLICY_DELETED", 4),
            ("ENDPOINT_REGENERATE_SUCCESS", 5),
            ("ENDPOINT_REGENERATE_FAILURE", 6),
            ("ENDPOINT_CREATED", 7),
            ("ENDPOINT_DELETED", 8),
            ("IPCACHE_UPSERTED", 9),
            ("IPCACHE_DELETED", 10),
            ("SERVICE_UPSERTED", 11),
            ("SERVICE_DELETED", 12),
        ],
    ),
    (
        "flow.SocketTranslationPoint",
        &[
            ("SOCK_XLATE_POINT_UNKNOWN", 0),
            ("SOCK_XLATE_POINT_PRE_DIRECTION_FWD", 1),
            ("SOCK_XLATE_POINT_POST_DIRECTION_FWD", 2),
            ("SOCK_XLATE_POINT_PRE_DIRECTION_REV", 3),
            ("SOCK_XLATE_POINT_POST_DIRECTION_REV", 4),
        ],
    ),
    (
        "flow.DebugEventType",
        &[
            ("DBG_EVENT_UNKNOWN", 0),
            ("DBG_GENERIC", 1),
            ("DBG_LOCAL_DELIVERY", 2),
            ("DBG_ENCAP", 3),
            ("DBG_LXC_FOUND", 4),
            ("DBG_POLICY_DENIED", 5),
            ("DBG_CT_LOOKUP", 6),
            ("DBG_CT_LOOKUP_REV", 7),
            ("DBG_CT_MATCH", 8),
            ("DBG_CT_CREATED", 9),
            ("DBG_CT_CREATED2", 10),
            ("DBG_ICMP6_HANDLE", 11),
            ("DBG_ICMP6_REQUEST", 12),
            ("DBG_ICMP6_NS", 13),
            ("DBG_ICMP6_TIME_EXCEEDED", 14),
            ("DBG_CT_VERDICT", 15),
            ("DBG_DECAP", 16),
            ("DBG_PORT_MAP", 17),
            ("DBG_ERROR_RET", 18),
            ("DBG_TO_HOST", 19),
            ("DBG_TO_STACK", 20),
            ("DBG_PKT_HASH", 21),
            ("DBG_LB6_LOOKUP_FRONTEND", 22),
            ("DBG_LB6_LOOKUP_FRONTEND_FAIL", 23),
            ("DBG_LB6_LOOKUP_BACKEND_SLOT", 24),
            ("DBG_LB6_LOOKUP_BACKEND_SLOT_SUCCESS", 25),
            ("DBG_LB6_LOOKUP_BACKEND_SLOT_V2_FAIL", 26),
            ("DBG_LB6_LOOKUP_BACKEND_FAIL", 27),
            ("DBG_LB6_REVERSE_NAT_LOOKUP", 28),
            ("DBG_LB6_REVERSE_NAT", 29),
            ("DBG_LB4_LOOKUP_FRONTEND", 30),
            ("DBG_LB4_LOOKUP_FRONTEND_FAIL", 31),
            ("DBG_LB4_LOOKUP_BACKEND_SLOT", 32),
            ("DBG_LB4_LOOKUP_BACKEND_SLOT_SUCCESS", 33),
            ("DBG_LB4_LOOKUP_BACKEND_SLOT_V2_FAIL", 34),
            ("DBG_LB4_LOOKUP_BACKEND_FAIL", 35),
            ("DBG_LB4_REVERSE_NAT_LOOKUP", 36),
            ("DBG_LB4_REVERSE_NAT", 37),
            ("DBG_LB4_LOOPBACK_SNAT", 38),
            ("DBG_LB4_LOOPBACK_SNAT_REV", 39),
            ("DBG_CT_LOOKUP4", 40),
            ("DBG_RR_BACKEND_SLOT_SEL", 41),
            ("DBG_REV_PROXY_LOOKUP", 42),
            ("DBG_REV_PROXY_FOUND", 43),
            ("DBG_REV_PROXY_UPDATE", 44),
            ("DBG_L4_POLICY", 45),
            ("DBG_NETDEV_IN_CLUSTER", 46),
            ("DBG_NETDEV_ENCAP4", 47),
            ("DBG_CT_LOOKUP4_1", 48),
            ("DBG_CT_LOOKUP4_2", 49),
            ("DBG_CT_CREATED4", 50),
            ("DBG_CT_LOOKUP6_1", 51),
            ("DBG_CT_LOOKUP6_2", 52),
            ("DBG_CT_CREATED6", 53),
            ("DBG_SKIP_PROXY", 54),
            ("DBG_L4_CREATE", 55),
            ("DBG_IP_ID_MAP_FAILED4", 56),
            ("DBG_IP_ID_MAP_FAILED6", 57),
            ("DBG_IP_ID_MAP_SUCCEED4", 58),
            ("DBG_IP_ID_MAP_SUCCEED6", 59),
            ("DBG_LB_STALE_CT", 60),
            ("DBG_INHERIT_IDENTITY", 61),
            ("DBG_SK_LOOKUP4", 62),
            ("DBG_SK_LOOKUP6", 63),
            ("DBG_SK_ASSIGN", 64),
            ("DBG_L7_LB", 65),
            ("DBG_SKIP_POLICY", 66),
            ("DBG_LB6_LOOPBACK_SNAT", 67),
            ("DBG_LB6_LOOPBACK_SNAT_REV", 68),
        ],
    ),
    (
        "relay.NodeState",
        &[
            ("UNKNOWN_NODE_STATE", 0),
            ("NODE_CONNECTED", 1),
            ("NODE_UNAVAILABLE", 2),
            ("NODE_GONE", 3),
            ("NODE_ERROR", 4),
        ],
    ),
];

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// weir's own stand-ins for Google's well-known types (same wire encoding).
    const STAND_INS: [(&str, &str); 4] = [
        ("flow.Timestamp", "google.protobuf.Timestamp"),
        ("flow.BoolValue", "google.protobuf.BoolValue"),
        ("flow.FieldMask", "google.protobuf.FieldMask"),
        ("observer.UInt32Value", "google.protobuf.UInt32Value"),
    ];

    fn hubble_type(weir: &str) -> &str {
        STAND_INS.iter().find(|(w, _)| *w == weir).map_or(weir, |(_, h)| h)
    }

    fn scalar(t: i32) -> &'static str {
        use prost_types::field_descriptor_proto::Type as T;
        match T::try_from(t) {
            Ok(T::Double) => "double",
            Ok(T::Float) => "float",
            Ok(T::Int64) => "int64",
            Ok(T::Uint64) => "uint64",
            Ok(T::Int32) => "int32",
            Ok(T::Fixed64) => "fixed64",
            Ok(T::Fixed32) => "fixed32",
            Ok(T::Bool) => "bool",
            Ok(T::String) => "string",
            Ok(T::Bytes) => "bytes",
            Ok(T::Uint32) => "uint32",
            Ok(T::Sfixed32) => "sfixed32",
            Ok(T::Sfixed64) => "sfixed64",
            Ok(T::Sint32) => "sint32",
            Ok(T::Sint64) => "sint64",
            _ => "?",
        }
    }

    /// Every message, field and enum value weir's protos declare, with its number and type.
    type Messages = Vec<(String, Vec<(String, u32, String)>)>;
    type Enums = Vec<(String, Vec<(String, i32)>)>;

    fn declared() -> (Messages, Enums) {
        use prost_types::{field_descriptor_proto::Label, DescriptorProto, FileDescriptorSet};
        let set = FileDescriptorSet::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/weir_protos.bin"))[..])
            .expect("weir's descriptor set");
        let (mut messages, mut enums) = (Vec::new(), Vec::new());
        fn walk(prefix: &str, list: &[DescriptorProto], messages: &mut Messages, enums: &mut Enums) {
            for m in list {
                let name = format!("{prefix}{}", m.name());
                let fields = m
                    .field
                    .iter()
                    .map(|f| {
                        let ty = match f.type_name() {
                            "" => scalar(f.r#type.unwrap_or_default()).to_owned(),
                            t => hubble_type(t.trim_start_matches('.')).to_owned(),
                        };
                        let repeated = if f.label() == Label::Repeated { "repeated " } else { "" };
                        (f.name().to_owned(), f.number() as u32, format!("{repeated}{ty}"))
                    })
                    .collect();
                messages.push((name.clone(), fields));
                walk(&format!("{name}."), &m.nested_type, messages, enums);
                for e in &m.enum_type {
                    enums.push((
                        format!("{name}.{}", e.name()),
                        e.value.iter().map(|v| (v.name().to_owned(), v.number())).collect(),
                    ));
                }
            }
        }
        for file in &set.file {
            let prefix = format!("{}.", file.package());
            walk(&prefix, &file.message_type, &mut messages, &mut enums);
            for e in &file.enum_type {
                enums.push((
                    format!("{prefix}{}", e.name()),
                    e.value.iter().map(|v| (v.name().to_owned(), v.number())).collect(),
                ));
            }
        }
        (messages, enums)
    }

    #[test]
    fn weirs_protos_agree_with_the_targeted_hubble_release() {
        let (messages, enums) = declared();
        assert!(messages.len() > 20, "{messages:?}");
        for (message, fields) in &messages {
            if STAND_INS.iter().any(|(w, _)| w == message) {
                continue;
            }
            let (_, facts) = MESSAGES
                .iter()
                .find(|(m, _)| m == message)
                .unwrap_or_else(|| panic!("weir's {message} is not a message of Hubble {HUBBLE_VERSION}"));
            for (name, number, ty) in fields {
                let fact = facts.iter().find(|(n, _, _)| n == name);
                assert_eq!(
                    fact.map(|(_, n, t)| (*n, *t)),
                    Some((*number, ty.as_str())),
                    "{message}.{name}: weir says {number} {ty}"
                );
            }
        }
        for (name, values) in &enums {
            let (_, facts) = ENUMS
                .iter()
                .find(|(e, _)| e == name)
                .unwrap_or_else(|| panic!("weir's enum {name} is not one of Hubble {HUBBLE_VERSION}"));
            for (value, number) in values {
                assert_eq!(facts.iter().find(|(v, _)| v == value).map(|(_, n)| *n), Some(*number), "{name}.{value}");
            }
        }
    }

    #[test]
    fn every_filter_field_of_the_targeted_release_is_declared() {
        let (messages, _) = declared();
        let weir = &messages.iter().find(|(m, _)| m == "flow.FlowFilter").expect("FlowFilter").1;
        let hubble = MESSAGES.iter().find(|(m, _)| *m == "flow.FlowFilter").expect("facts").1;
        let mut missing: Vec<&str> =
            hubble.iter().filter(|(n, _, _)| !weir.iter().any(|(w, _, _)| w == n)).map(|(n, _, _)| *n).collect();
        missing.sort_unstable();
        assert!(missing.is_empty(), "FlowFilter fields of Hubble {HUBBLE_VERSION} weir lacks: {missing:?}");
    }
}
