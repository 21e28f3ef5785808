// Command pause is the Pod sandbox's process, like Kubernetes' pause.c: it holds the Pod's
// namespaces, reaps orphaned children (when the Pod shares its PID namespace) and exits on
// SIGINT or SIGTERM. The local cluster has no registry, so it builds its sandbox image from this.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		os.Stdout.WriteString("pause (ffmpeg-rtmp local cluster)\n")
		return
	}
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
