Kind = "service-intentions"
Name = "api"
Sources = [
  {
    Name   = "web"
    Permissions = [
      {
        Action = "deny"
        HTTP = {
          PathPrefix = "/admin"
        }
      },
      {
        Action = "allow"
        HTTP = {
          PathPrefix = "/v1/"
          Methods    = ["GET", "POST"]
        }
      },
      {
        Action = "allow"
        HTTP = {
          PathExact = "/health"
          Header = [
            {
              Name  = "x-internal"
              Regex = "^yes$"
            }
          ]
        }
      }
    ]
  },
  {
    Name   = "legacy-batch"
    Action = "allow"
    Peer   = "dc2"
  },
  {
    Name   = "billing"
    Permissions = [
      {
        Action = "allow"
        JWT = { Providers = [{ Name = "okta" }] }
      }
    ]
  }
]
