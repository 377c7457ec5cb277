// Mints a turnd REST credential in Go (standard library only):
// go run mint.go SECRET USER TTL_SECONDS prints
// {"username":"<expiry>:<user>","credential":"base64(HMAC-SHA1(secret, username))"}.
package main

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"
)

type iceCredential struct {
	Username   string `json:"username"`
	Credential string `json:"credential"`
}

func turnCredential(secret, user string, ttl time.Duration) iceCredential {
	username := fmt.Sprintf("%d:%s", time.Now().Add(ttl).Unix(), user)
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(username))
	return iceCredential{username, base64.StdEncoding.EncodeToString(mac.Sum(nil))}
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: mint SECRET USER TTL_SECONDS")
		os.Exit(2)
	}
	ttl, err := strconv.Atoi(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, "TTL_SECONDS:", err)
		os.Exit(2)
	}
	out, _ := json.Marshal(turnCredential(os.Args[1], os.Args[2], time.Duration(ttl)*time.Second))
	fmt.Println(string(out))
}
