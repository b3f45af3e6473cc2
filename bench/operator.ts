export async function operatorAtScale(_o: { applies: number; relays: number; namespaces: number; quietMs: number }): Promise<string> {
  return 'todo';
}
