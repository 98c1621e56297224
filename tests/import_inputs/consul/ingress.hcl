Kind = "ingress-gateway"
Name = "ingress-service"
Listeners = [
  {
    Port     = 8443
    Protocol = "http"
    Services = [
      {
        Name  = "web"
        Hosts = ["web.example.com"]
      }
    ]
  }
]
