# dns-read: attached to the anonymous token so Consul DNS answers SRV queries
# for runners (coordinators discover models through DNS or the health API).
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
