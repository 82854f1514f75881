package wire

import (
	"go/ast"
	"go/parser"
	"go/token"
	"testing"
)

// The mesh key is compared in constant time, so that a client guessing
// keys learns nothing from how long the server takes to refuse it. Time
// cannot be asserted in a test, so this reads the code: MeshKey.Equal
// must compare with crypto/subtle and nothing else, and no other method
// of MeshKey may compare two keys with == (IsZero compares with the zero
// key, which leaks only whether a client sent one at all).
func TestMeshKeyEqualIsConstantTime(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "keys.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Recv == nil || recvType(fn) != "MeshKey" {
			continue
		}
		if fn.Name.Name == "Equal" {
			found = true
			if !callsSubtle(fn.Body, "ConstantTimeCompare") {
				t.Errorf("%s: MeshKey.Equal does not call subtle.ConstantTimeCompare", fset.Position(fn.Pos()))
			}
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			// A comparison with a literal (subtle's result == 1) is of
			// numbers, not keys.
			if be, ok := n.(*ast.BinaryExpr); ok && (be.Op == token.EQL || be.Op == token.NEQ) && fn.Name.Name != "IsZero" &&
				!isBasicLit(be.X) && !isBasicLit(be.Y) {
				t.Errorf("%s: MeshKey.%s compares with %v", fset.Position(be.Pos()), fn.Name.Name, be.Op)
			}
			return true
		})
	}
	if !found {
		t.Fatal("no MeshKey.Equal in keys.go")
	}
	var a, b MeshKey
	a[31], b[31] = 1, 1
	if !a.Equal(b) || a.Equal(MeshKey{}) {
		t.Fatal("MeshKey.Equal gives wrong answers")
	}
}

func recvType(fn *ast.FuncDecl) string {
	switch x := fn.Recv.List[0].Type.(type) {
	case *ast.Ident:
		return x.Name
	case *ast.StarExpr:
		if id, ok := x.X.(*ast.Ident); ok {
			return id.Name
		}
	}
	return ""
}

func callsSubtle(body *ast.BlockStmt, name string) bool {
	found := false
	ast.Inspect(body, func(n ast.Node) bool {
		if sel, ok := n.(*ast.SelectorExpr); ok {
			if pkg, ok := sel.X.(*ast.Ident); ok && pkg.Name == "subtle" && sel.Sel.Name == name {
				found = true
			}
		}
		return true
	})
	return found
}

func isBasicLit(e ast.Expr) bool {
	_, ok := e.(*ast.BasicLit)
	return ok
}
