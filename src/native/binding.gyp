{
  "targets": [
    {
      "target_name": "ipp_tunnel_native",
      "sources": ["malloc-trim.c"],
      "cflags": ["-O2"]
    }
  ]
}
