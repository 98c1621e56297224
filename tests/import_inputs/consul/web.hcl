Kind     = "service-defaults"
Name     = "web"
Protocol = "http"
UpstreamConfig = {
  Overrides = [
    {
      Name = "api"
      Limits = {
        MaxConnections        = 512
        MaxPendingRequests    = 512
        MaxConcurrentRequests = 512
      }
      PassiveHealthCheck = {
        Interval    = "10s"
        MaxFailures = 5
      }
    }
  ]
}
