Kind     = "service-defaults"
Name     = "api"
Protocol = "http"
LocalRequestTimeoutMs = 3000
