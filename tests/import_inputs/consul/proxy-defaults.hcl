# Modelled on developer.hashicorp.com/consul/docs/connect/config-entries examples.
Kind = "proxy-defaults"
Name = "global"
MutualTLSMode = "strict"
AccessLogs = {
  Enabled = true
}
Config = {
  protocol = "http"
}
