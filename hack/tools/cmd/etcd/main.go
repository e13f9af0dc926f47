// Command etcd is the etcd server, built from the pinned go.etcd.io/etcd/server/v3 module.
// etcd ships no installable main package as a module path we can `go build` with our pins, so this
// forwards to etcdmain exactly as etcd's own server/main.go does.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
