{
  "targets": [
    {
      "target_name": "ipp_tunnel_native",
      "sources": ["native.c"],
      "cflags": ["-O2"]
    }
  ]
}
