app {
  url = "https://github.com/modelnodes/modelnodes"
}

pack {
  name        = "modelnodes_model"
  description = "One model's job as the Model Nodes scheduler builds it (modelbox driver, Vault certificates, Consul gRPC check), for running or inspecting one by hand."
  version     = "0.1.0"
}
